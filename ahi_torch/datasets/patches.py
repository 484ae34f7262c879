"""PatchDataset: a grid of patches over every whole-slide image of an index, each read from its covering tiles."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..client import AHIClient
from ..errors import ConfigError, MetadataError, NotASlideError, NotASlideWarning, NoTissueWarning
from ..fetch import FrameFetcher
from ..index import FrameIndex
from ..metadata import ImageSetMetadata
from ..slides import Slide, describe_slide
from ..slides.regions import covering, level_corner, paste, resize, tile_rgb
from ..slides.tissue import tissue_fractions, tissue_mask
from ._base import AHIDataset, Transform
from .labels import LabelSpec
from .policy import ErrorPolicy

#: The longest side of the thumbnail a tissue mask is computed on.
MASK_SIDE = 1024


@dataclass(frozen=True)
class SlideReading:
    """How the patches of one slide are read: the level, and the region of it one patch covers."""

    level: int
    #: level-0 pixels per pixel of that level.
    downsample: float
    #: (width, height) read at the level; resized to the patch size when they differ.
    read_size: tuple[int, int]
    #: µm per pixel of the patch as served (None where the slide gives no spacing).
    mpp: float | None
    #: ``rows[r, c]``: the index row of the level's tile at row r, column c (-1: none stored).
    tile_rows: np.ndarray
    tile_size: tuple[int, int]
    level_size: tuple[int, int]


class PatchDataset(AHIDataset):
    """Patches of every whole-slide image in ``index``, fetched tile by tile through the frame cache.

    >>> patches = PatchDataset(index, FrameFetcher(client, cache=FrameCache()), size=256, mpp=0.5, tissue=0.5)
    >>> item = patches[0]
    >>> item["image"].shape, item["meta"]["location"], item["meta"]["mpp"]
    (torch.Size([3, 256, 256]), tensor([1024, 512]), 0.5)

    Items are ``{"image": (3, h, w) uint8 tensor, "meta": {...}, "label": ...}``. ``meta`` carries
    the image set, ``level``, ``location`` (x, y of the top-left corner in level-0 pixels, as
    OpenSlide's ``read_region`` takes it), ``extent`` (width, height in level-0 pixels) and ``mpp``.

    Args:
        index: an index whose image sets hold slides (others are left out with a warning).
        source: a :class:`~ahi_torch.fetch.FrameFetcher` or an :class:`~ahi_torch.client.AHIClient`.
        size: patch (width, height) in pixels as served, or one number for squares.
        level: the pyramid level patches are read from; or
        mpp: the µm per pixel patches are served at: read from the finest level no finer than
            needed and resized (antialiased) when the level's spacing differs.
        stride: grid step in served pixels (default ``size``: a grid that covers each slide once).
        locations: ``(image_set_id, x, y)`` level-0 corners to serve instead of a grid.
        tissue: keep only grid patches with at least this share of tissue (Otsu on the
            thumbnail's saturation, :mod:`ahi_torch.slides.tissue`); None keeps every patch.
        labels, unlabeled, transform, error_policy, table_dir: as for :class:`FrameDataset`;
            labels are per slide (a series-level table, a column, a mapping).
        background: the value of pixels outside a slide.
    """

    #: Slides have no patient geometry; a patch's place is its ``location``.
    warns_missing_geometry = False

    def __init__(
        self,
        index: FrameIndex,
        source: AHIClient | FrameFetcher,
        *,
        size: int | tuple[int, int] = 256,
        level: int | None = None,
        mpp: float | None = None,
        stride: int | tuple[int, int] | None = None,
        locations: Sequence[tuple[str, int, int]] | None = None,
        tissue: float | None = None,
        labels: LabelSpec = None,
        unlabeled: str = "error",
        transform: Transform | None = None,
        error_policy: ErrorPolicy | str = "raise",
        table_dir: str | Path | None = None,
        background: int = 255,
    ) -> None:
        check_patch_options(size, level, mpp, stride, tissue)
        self.size = _pair(size)
        stride_pair = _pair(stride) if stride is not None else self.size
        fetcher = source if isinstance(source, FrameFetcher) else FrameFetcher(source)
        slides = _open_slides(index, fetcher)
        index = index.filter(np.isin(index.column("image_set_id"), [s.image_set_id.encode() for s in slides]))
        super().__init__(
            index,
            fetcher,
            labels=labels,
            unlabeled=unlabeled,
            transform=transform,
            rescale=False,
            dtype=None,
            error_policy=error_policy,
            table_dir=table_dir,
        )
        # Labels may have dropped rows (unlabeled="drop"): only slides with rows left stay.
        every_row = np.arange(len(self.frame_table))
        first_row_of: dict[str, int] = {}
        for row, image_set_id in enumerate(self.frame_table.strings("image_set_id", every_row)):
            first_row_of.setdefault(image_set_id, row)
        self.slides = [slide for slide in slides if slide.image_set_id in first_row_of]
        for slide in self.slides:
            slide.fetcher = self.fetcher
        self.background = background
        rows_of_frames = {frame_id: row for row, frame_id in enumerate(self.frame_table.strings("frame_id", every_row))}
        self.readings = [self._reading(slide, level, mpp, rows_of_frames) for slide in self.slides]
        #: The index row of each slide's first frame: where a patch's identifiers and label are read.
        self.slide_first_row = np.array([first_row_of[slide.image_set_id] for slide in self.slides], dtype=np.int64)
        if locations is not None:
            self.patch_slide, self.patch_xy = self._given(locations)
        else:
            self.patch_slide, self.patch_xy = self._grid(stride_pair, tissue)
        if not len(self.patch_slide):
            raise ConfigError("no patches: every grid patch was dropped (lower tissue=, or check the slides)")

    # --- construction ---------------------------------------------------------------------------

    def _reading(
        self, slide: Slide, level: int | None, mpp: float | None, rows_of_frames: dict[str, int]
    ) -> SlideReading:
        if mpp is not None:
            if slide.mpp is None:
                raise ConfigError(f"slide {slide.image_set_id} gives no pixel spacing: choose patches by level=")
            level = slide.get_best_level_for_downsample(mpp / slide.mpp)
        assert level is not None
        if not 0 <= level < slide.level_count:
            raise ConfigError(
                f"level {level} is not one of the {slide.level_count} levels of slide {slide.image_set_id}"
            )
        downsample = slide.level_downsamples[level]
        scale = 1.0 if mpp is None or slide.mpp is None else mpp / (slide.mpp * downsample)
        image = slide.pyramid.levels[level]
        tile_rows = np.full(image.tiles.shape, -1, dtype=np.int64)
        for (r, c), frame in np.ndenumerate(image.tiles):
            if frame >= 0:
                tile_rows[r, c] = rows_of_frames.get(image.frame_ids[frame], -1)
        if (tile_rows[image.tiles >= 0] < 0).any():
            raise MetadataError(f"the index lacks tiles of slide {slide.image_set_id} level {level}: rebuild it")
        return SlideReading(
            level=level,
            downsample=downsample,
            read_size=(max(1, round(self.size[0] * scale)), max(1, round(self.size[1] * scale))),
            mpp=(mpp if mpp is not None else slide.mpp * downsample if slide.mpp is not None else None),
            tile_rows=tile_rows,
            tile_size=image.tile_size,
            level_size=image.size,
        )

    def _extent(self, reading: SlideReading) -> tuple[int, int]:
        """(width, height) in level-0 pixels that one patch covers."""
        return (round(reading.read_size[0] * reading.downsample), round(reading.read_size[1] * reading.downsample))

    def _grid(self, stride: tuple[int, int], tissue: float | None) -> tuple[np.ndarray, np.ndarray]:
        owners, corners = [], []
        for number, (slide, reading) in enumerate(zip(self.slides, self.readings, strict=True)):
            extent = self._extent(reading)
            step = (extent[0] * stride[0] / self.size[0], extent[1] * stride[1] / self.size[1])
            width, height = slide.dimensions
            xs = np.round(np.arange(math.ceil(width / step[0])) * step[0]).astype(np.int64)
            ys = np.round(np.arange(math.ceil(height / step[1])) * step[1]).astype(np.int64)
            grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
            if tissue is not None:
                grid = self._with_tissue(slide, grid, extent, tissue)
            owners.append(np.full(len(grid), number, dtype=np.int32))
            corners.append(grid)
        return np.concatenate(owners), np.concatenate(corners).reshape(-1, 2)

    def _with_tissue(self, slide: Slide, grid: np.ndarray, extent: tuple[int, int], share: float) -> np.ndarray:
        mask = tissue_mask(slide.get_thumbnail((MASK_SIDE, MASK_SIDE)))
        boxes = np.concatenate([grid, np.broadcast_to(np.array(extent), grid.shape)], axis=1)
        kept = grid[tissue_fractions(mask, slide.dimensions, boxes) >= share]
        if not len(kept):
            warnings.warn(
                f"slide {slide.image_set_id}: no patch has {share:.0%} tissue; it serves none",
                NoTissueWarning,
                stacklevel=4,
            )
        return kept

    def _given(self, locations: Sequence[tuple[str, int, int]]) -> tuple[np.ndarray, np.ndarray]:
        number_of = {slide.image_set_id: number for number, slide in enumerate(self.slides)}
        owners, corners = [], []
        for image_set_id, x, y in locations:
            if image_set_id not in number_of:
                raise ConfigError(f"location on image set {image_set_id}, which holds no slide of this dataset")
            owners.append(number_of[image_set_id])
            corners.append((int(x), int(y)))
        return np.array(owners, dtype=np.int32), np.array(corners, dtype=np.int64).reshape(-1, 2)

    def __getstate__(self) -> dict[str, Any]:
        # Workers need the readings (arrays) and the shared table, not the slides' pyramids: their
        # frame IDs are a Python string per tile, which every worker would copy.
        return {**super().__getstate__(), "slides": []}

    # --- what AHIDataset asks of a dataset ------------------------------------------------------

    def __len__(self) -> int:
        return len(self.patch_slide)

    def first_rows(self) -> np.ndarray:
        return self.slide_first_row[self.patch_slide]

    def _tiles(self, index: int) -> tuple[SlideReading, tuple[int, int], list[tuple[int, int, int]]]:
        """The patch's reading, its corner in level pixels, and (x, y, index row) of each covering tile."""
        reading = self.readings[int(self.patch_slide[index])]
        x, y = self.patch_xy[index]
        corner = level_corner((int(x), int(y)), reading.downsample)
        return (
            reading,
            corner,
            covering(reading.tile_rows, reading.tile_size, reading.level_size, corner, reading.read_size),
        )

    def _rows(self, index: int) -> np.ndarray:
        return np.array([row for _, _, row in self._tiles(index)[2]], dtype=np.int64)

    def _build(self, index: int, frames: list[np.ndarray]) -> dict[str, Any]:
        reading, corner, tiles = self._tiles(index)
        width, height = reading.read_size
        region = np.full((height, width, 3), self.background, dtype=np.uint8)
        rows = np.array([row for _, _, row in tiles], dtype=np.int64)
        first = int(self.slide_first_row[int(self.patch_slide[index])])
        where = f"slide {self.frame_table.text('image_set_id', first)}"
        for (x, y, _), pixels, photometric, syntax in zip(
            tiles,
            frames,
            self.frame_table.strings("photometric_interpretation", rows),
            self.frame_table.strings("stored_transfer_syntax", rows),
            strict=True,
        ):
            rgb = tile_rgb(pixels, reading.tile_size, photometric, syntax, where)
            paste(region, corner, rgb, (x, y), reading.level_size)
        image = torch.from_numpy(resize(region, self.size)).permute(2, 0, 1).contiguous()
        meta = {
            "index": index,
            "datastore_id": self.frame_table.text("datastore_id", first),
            "image_set_id": self.frame_table.text("image_set_id", first),
            "image_set_version": int(self.frame_table.image_set_version[first]),
            "patient_id": self.frame_table.text("patient_id", first),
            "series_instance_uid": self.frame_table.text("series_instance_uid", first),
            "level": reading.level,
            "location": torch.from_numpy(self.patch_xy[index].copy()),
            "extent": torch.tensor(self._extent(reading)),
            "mpp": float("nan") if reading.mpp is None else reading.mpp,
        }
        item: dict[str, Any] = {"image": image, "meta": meta}
        label = self.label_of_row(first)
        if label is not None:
            item["label"] = label
        return item


def check_patch_options(
    size: int | tuple[int, int],
    level: int | None,
    mpp: float | None,
    stride: int | tuple[int, int] | None,
    tissue: float | None,
) -> None:
    """Raise :class:`ConfigError` naming the first patch option that cannot work (configs check with it too)."""
    for name, value in (("size", size), ("stride", stride)):
        if value is None:
            continue
        pair = (value, value) if isinstance(value, int) else tuple(value)
        if len(pair) != 2 or any(int(v) <= 0 for v in pair):
            raise ConfigError(f"{name} must be a positive number or (width, height), not {value!r}")
    if (level is None) == (mpp is None):
        raise ConfigError("give patches either a level or an mpp, not both or neither")
    if level is not None and level < 0:
        raise ConfigError(f"level must be 0 or more, not {level}")
    if mpp is not None and not mpp > 0:
        raise ConfigError(f"mpp must be positive, not {mpp}")
    if tissue is not None and not 0 <= tissue <= 1:
        raise ConfigError(f"tissue is a share of the patch in [0, 1], not {tissue}")


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    return int(pair[0]), int(pair[1])


def _open_slides(index: FrameIndex, fetcher: FrameFetcher) -> list[Slide]:
    """A :class:`Slide` for each image set of ``index`` that holds one; a warning names the others.

    One GetImageSetMetadata per image set, at the version the index holds, eight at a time.
    """
    client: Any = fetcher.client
    datastores = dict(zip(index.texts("image_set_id"), index.texts("datastore_id"), strict=True))

    def describe(image_set_id: str, version: int) -> Slide | None:
        datastore_id = str(datastores[image_set_id])
        document = client.get_image_set_metadata(
            datastoreId=datastore_id, imageSetId=image_set_id, versionId=str(version)
        )
        try:
            pyramid = describe_slide(ImageSetMetadata.parse(document))
        except NotASlideError:
            return None
        return Slide(fetcher, datastore_id, image_set_id, version, pyramid)

    image_sets = sorted(index.image_sets().items())
    with ThreadPoolExecutor(max_workers=8) as pool:
        found = list(pool.map(lambda item: describe(item[0], item[1][0]), image_sets))
    slides = [slide for slide in found if slide is not None]
    others = [image_set_id for (image_set_id, _), slide in zip(image_sets, found, strict=True) if slide is None]
    if not slides:
        raise ConfigError(f"none of the index's {len(others)} image sets holds a whole-slide image")
    if others:
        warnings.warn(
            f"{len(others)} of {len(image_sets)} image sets hold no whole-slide image and are left out "
            f"of the patch dataset (e.g. {others[0]})",
            NotASlideWarning,
            stacklevel=3,
        )
    return slides
