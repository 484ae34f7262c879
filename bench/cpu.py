"""Client CPU per frame: what a training node pays for each frame, whole paths and stage by stage.

Every row handles the same frames in the benchmark's own process (DataLoader without worker
processes, the dataset's fetch threads included), with the local AHI in a process of its own, so
its CPU is not counted. ``time.process_time`` covers all threads of this process. Each row runs
``repeats`` times; the medians are reported.

The stage rows split a cold frame into what it costs: signing (ahi_torch's signer and botocore's),
the transfer alone (an unsigned POST, which the local AHI accepts on loopback), the CRC32 check,
the cache's write and read alone, and the dataset's own work per item (``item_assembly``: references,
geometry, meta, labels and tensors for frames already in memory).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import urllib3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from torch.utils.data import DataLoader, Dataset

from ahi_torch.cache import FrameCache, FrameKey
from ahi_torch.codecs import decode_frame, pixel_crc32
from ahi_torch.counters import counting
from ahi_torch.crc32 import BACKEND as CRC_BACKEND
from ahi_torch.datasets import FrameDataset
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex

from .loaders import DecodeOnlyDataset, MemmapDataset, NaiveDataset

#: Frames per row (the issue's table used 256 frames of 512x512 int16 HTJ2K).
FRAMES = 256


def _cpu_ms(run: Callable[[], int]) -> float:
    """Milliseconds of this process's CPU (all threads) per frame that ``run`` handles."""
    started = time.process_time()
    frames = run()
    return (time.process_time() - started) * 1000 / max(1, frames)


def _epoch(dataset: Dataset[Any], batch_size: int = 16) -> int:
    items = 0
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0):
        images = batch["image"] if isinstance(batch, dict) else batch
        items += len(images)
    return items


def _assembly(dataset: FrameDataset, pixels: list[Any], batch_size: int = 16) -> int:
    """The dataset's own work per item above its frames, as ``__getitems__`` does it a batch at a time."""
    for start in range(0, len(pixels), batch_size):
        units = list(range(start, min(start + batch_size, len(pixels))))
        dataset.frame_table.refs(np.asarray(units))
        dataset._build_batch(units, [[pixels[unit]] for unit in units])
    return len(pixels)


def _raw_requests(endpoint_url: str, datastore_id: str, frames: list[tuple[str, str]]) -> Callable[[], int]:
    """The floor for the transfer: signed urllib3 POSTs on one pooled connection, then the same decode."""
    pool = urllib3.PoolManager(maxsize=1)
    auth = SigV4Auth(Credentials("local", "local"), "medical-imaging", "us-east-1")

    def run() -> int:
        for image_set_id, frame_id in frames:
            url = f"{endpoint_url}/datastore/{datastore_id}/imageSet/{image_set_id}/getImageFrame"
            body = json.dumps({"imageFrameId": frame_id}).encode()
            request = AWSRequest("POST", url, data=body, headers={"Content-Type": "application/json"})
            auth.add_auth(request)
            response = pool.request("POST", url, body=body, headers=dict(request.headers.items()))
            decode_frame(response.data)
        return len(frames)

    return run


def _stages(
    client: Any, datastore_id: str, frames: list[tuple[str, str]], pixels: list[Any], work: Path
) -> dict[str, Callable[[], int]]:
    """One row per stage of a cold frame's trip (see the module docstring)."""
    transport = client.frame_transport
    credentials = Credentials("local", "local")
    bodies = [json.dumps({"imageFrameId": frame_id}).encode() for _, frame_id in frames]
    paths = [transport.path(datastore_id, image_set_id) for image_set_id, _ in frames]
    pool = urllib3.connection_from_url(transport.url_template, maxsize=1)
    keys = [FrameKey(datastore_id, image_set_id, 1, frame_id) for image_set_id, frame_id in frames]
    made = iter(range(1_000_000))

    def sign_botocore() -> int:
        signer = SigV4Auth(credentials, "medical-imaging", "us-east-1")
        for path, body in zip(paths, bodies, strict=True):
            request = AWSRequest("POST", transport.endpoint_url + path, data=body, headers=_JSON)
            signer.add_auth(request)
        return len(frames)

    def sign_ahi_torch() -> int:
        for path, body in zip(paths, bodies, strict=True):
            transport.signed_headers(path, body)
        return len(frames)

    def transfer_unsigned() -> int:
        for path, body in zip(paths, bodies, strict=True):
            pool.urlopen("POST", path, body=body, headers=_JSON).data  # noqa: B018 - the body is read
        return len(frames)

    def transfer_signed() -> int:
        for image_set_id, frame_id in frames:
            transport.get(datastore_id, image_set_id, frame_id)
        return len(frames)

    def cache_write() -> int:
        cache = FrameCache(work / f"cpu-stage-cache-{next(made)}")
        for key, frame in zip(keys, pixels, strict=True):
            cache.put_frame(key, frame, b"", "", pixel_crc32(frame))
        cache.close()  # the writer thread's work is this process's CPU too
        return len(frames)

    read_cache = FrameCache(work / "cpu-stage-cache-read")
    for key, frame in zip(keys, pixels, strict=True):
        read_cache.put_frame(key, frame, b"", "")
    read_cache.close()

    def cache_read() -> int:
        return sum(read_cache.get_frame(key, _no_decode) is not None for key in keys)

    return {
        "sign_botocore": sign_botocore,
        "sign_ahi_torch": sign_ahi_torch,
        "transfer_unsigned": transfer_unsigned,
        "transfer_signed": transfer_signed,
        "verify_crc32": lambda: sum(1 for frame in pixels if pixel_crc32(frame) >= 0),
        "cache_write": cache_write,
        "cache_read": cache_read,
    }


_JSON = {"Content-Type": "application/json"}


def _no_decode(data: bytes, content_type: str) -> Any:
    raise AssertionError("a decoded cache never decodes")


def measure_cpu(
    endpoint_url: str,
    client: Any,
    datastore_id: str,
    index: FrameIndex,
    encoded: list[bytes],
    work: Path,
    repeats: int,
) -> dict[str, Any]:
    """Median client CPU ms per frame of each way to load the same frames, and of each stage."""
    count = min(FRAMES, len(index))
    index = index.filter(torch.arange(len(index)).numpy() < count)
    encoded = encoded[:count]
    frames = list(zip(index.texts("image_set_id"), index.texts("frame_id"), strict=True))
    pixels = [decode_frame(data) for data in encoded]
    memmap = work / "cpu-frames.npy"
    np.save(memmap, np.stack(pixels))
    slope = float(index.column("rescale_slope")[0])
    intercept = float(index.column("rescale_intercept")[0])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in DataLoader workers, which ahi_torch runs in
    made = iter(range(1_000_000))

    def cold(mode: str) -> Callable[[], int]:
        return lambda: _epoch(
            FrameDataset(index, FrameFetcher(client, cache=FrameCache(work / f"cpu-{mode}-{next(made)}", mode=mode)))
        )

    warm_decoded = FrameDataset(index, FrameFetcher(client, cache=FrameCache(work / "cpu-warm-decoded")))
    warm_encoded = FrameDataset(
        index, FrameFetcher(client, cache=FrameCache(work / "cpu-warm-encoded", mode="encoded"))
    )
    _epoch(warm_decoded)
    _epoch(warm_encoded)
    rows: dict[str, Callable[[], int]] = {
        "decode_only": lambda: sum(1 for data in encoded if decode_frame(data) is not None),
        "decode_only_dataset": lambda: _epoch(DecodeOnlyDataset(encoded)),
        "urllib3_and_decode": _raw_requests(endpoint_url, datastore_id, frames),
        "naive_boto3_pylibjpeg": lambda: _epoch(NaiveDataset(endpoint_url, datastore_id, frames)),
        "ahi_torch_no_cache": lambda: _epoch(FrameDataset(index, client)),
        "ahi_torch_no_cache_1_thread": lambda: _epoch(FrameDataset(index, FrameFetcher(client, max_workers=1))),
        "ahi_torch_decoded_cold": cold("decoded"),
        "ahi_torch_encoded_cold": cold("encoded"),
        "ahi_torch_decoded_warm": lambda: _epoch(warm_decoded),
        "ahi_torch_encoded_warm": lambda: _epoch(warm_encoded),
        "memmap_dataset": lambda: _epoch(MemmapDataset(memmap, slope, intercept)),
        "item_assembly": lambda: _assembly(warm_decoded, pixels),
        **_stages(client, datastore_id, frames, pixels, work),
    }
    try:
        measured = {name: [_cpu_ms(run) for _ in range(repeats)] for name, run in rows.items()}
    finally:
        torch.set_num_threads(threads)
    return {
        "frames": count,
        "crc32": CRC_BACKEND,
        "ms_per_frame": {name: statistics.median(values) for name, values in measured.items()},
        "runs": measured,
    }


def measure_progressive(client: Any, index: FrameIndex, repeats: int) -> dict[str, Any]:
    """Frames/s and bytes per frame of reduce=2 reads that stop at their level, against whole frames.

    Fetchers in this process, 8 threads, no cache, the same frames for every row.
    """
    from ahi_torch.datasets._table import FrameTable
    from ahi_torch.fetch import FrameFetcher

    count = min(FRAMES, len(index))
    table = FrameTable(index)
    refs = [table.ref(row) for row in range(count)]
    rows = {
        "full_download": {"reduce": 0},
        "reduce2_whole_body": {"reduce": 2, "progressive": False},
        "reduce2_progressive": {"reduce": 2, "progressive": True},
    }
    results: dict[str, Any] = {"frames": count}
    for name, options in rows.items():
        rates, sizes = [], []
        for _ in range(repeats):
            fetcher = FrameFetcher(client, verify=True, **options)  # type: ignore[arg-type]
            started = time.perf_counter()
            with counting() as counted:
                fetcher.get_many(refs)
            rates.append(count / (time.perf_counter() - started))
            sizes.append(counted.bytes_fetched / count)
        results[name] = {"frames_per_s": rates, "bytes_per_frame": statistics.median(sizes)}
    return results
