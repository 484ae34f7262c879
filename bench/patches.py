"""Whole-slide patches: random 256² patches at level 0, ahi_torch's PatchDataset against the loop a user writes.

The naive loop reads the slide's tile layout from the metadata (that part is not timed: any reader
needs it once) and then, per patch, fetches every covering tile with boto3's ``get_image_frame``,
decodes it with pylibjpeg-openjpeg and pastes it. ahi_torch serves the same patches through a
DataLoader (no worker processes, its fetch threads included), uncached, then from a warm frame cache.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from ahi_torch.cache import FrameCache
from ahi_torch.datasets import PatchDataset
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import build_index
from ahi_torch.metadata import ImageSetMetadata
from ahi_torch.sample.slides import SlideSpec, write_slide
from ahi_torch.sample.synthetic import SeriesSpec
from ahi_torch.slides import describe_slide
from ahi_torch.slides.regions import covering, paste

from .service import ServiceProcess

#: Patch side in pixels, and tiles of the same size (so a random patch covers up to four).
PATCH = 256


def _slide(service: ServiceProcess, root: Path, width: int, height: int) -> tuple[str, str]:
    series = SeriesSpec(patient_id="BENCH-SLIDE", study_key="bench-slide", series_key="bench-slide", modality="SM")
    write_slide(root, SlideSpec(width=width, height=height, tile=PATCH, levels=3, associated=(), series=series))
    result = service.import_dicom(root)
    if result.status != "COMPLETED" or result.failures:
        raise RuntimeError(f"the benchmark slide failed to import: {result.message or result.failures[:3]}")
    client = service.client()
    image_set_id = next(iter(client.iter_image_sets(datastoreId=result.datastore_id)))["imageSetId"]
    return result.datastore_id, image_set_id


def _naive(service: ServiceProcess, datastore_id: str, image_set_id: str, corners: np.ndarray) -> float:
    """Patches/s of the loop: boto3 per covering tile, one after another, pylibjpeg decode, paste."""
    import openjpeg

    boto3_client = service.boto3("medical-imaging")
    document = service.client().get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
    level = describe_slide(ImageSetMetadata.parse(document)).levels[0]
    tile, size = (level.tile_width, level.tile_height), (level.width, level.height)
    started = time.perf_counter()
    for x, y in corners.tolist():
        region = np.full((PATCH, PATCH, 3), 255, dtype=np.uint8)
        for tile_x, tile_y, frame in covering(level.tiles, tile, size, (x, y), (PATCH, PATCH)):
            response = boto3_client.get_image_frame(
                datastoreId=datastore_id,
                imageSetId=image_set_id,
                imageFrameInformation={"imageFrameId": level.frame_ids[frame]},
            )
            pixels = openjpeg.decode(response["imageFrameBlob"].read())
            paste(region, (x, y), pixels, (tile_x, tile_y), size)
    return len(corners) / (time.perf_counter() - started)


def _epoch(dataset: PatchDataset, batch_size: int) -> float:
    started = time.perf_counter()
    served = sum(len(batch["image"]) for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0))
    return served / (time.perf_counter() - started)


def measure_patches(service: ServiceProcess, work: Path, patches: int, repeats: int, side: int) -> dict[str, Any]:
    """Patches/s of each way, and the tiles each patch fetched (see the module docstring)."""
    datastore_id, image_set_id = _slide(service, work / "slide", side, side * 3 // 4)
    client = service.client(max_pool_connections=32)
    index = build_index(client, datastore_id, progress=False)
    rng = np.random.default_rng(0)
    corners = np.stack([rng.integers(0, side - PATCH, patches), rng.integers(0, side * 3 // 4 - PATCH, patches)], 1)
    locations = [(image_set_id, int(x), int(y)) for x, y in corners]

    def dataset(cache: FrameCache | None) -> PatchDataset:
        return PatchDataset(index, FrameFetcher(client, cache=cache), size=PATCH, level=0, locations=locations)

    uncached = dataset(None)
    rates = {"ahi_torch_cold": [_epoch(uncached, 16) for _ in range(repeats)]}
    tiles_per_patch = uncached.stats.summary()["requests"] / (repeats * patches)
    warm = dataset(FrameCache(work / "patch-cache"))
    _epoch(warm, 16)
    rates["ahi_torch_warm"] = [_epoch(warm, 16) for _ in range(repeats)]
    rates["naive_boto3"] = [_naive(service, datastore_id, image_set_id, corners) for _ in range(repeats)]
    tiles = math.ceil(side / PATCH) * math.ceil(side * 3 // 4 / PATCH)
    return {
        "patches": patches,
        "slide": f"{side} x {side * 3 // 4} RGB, {tiles} tiles of {PATCH}² at level 0, HTJ2K lossless",
        "tiles_per_patch": tiles_per_patch,
        "patches_per_s": rates,
        "median": {name: statistics.median(values) for name, values in rates.items()},
    }
