"""A whole-slide image's pyramid as its DICOM metadata describes it: levels, tiles, associated images.

A slide (VL Whole Slide Microscopy, one series) is one instance per pyramid level, each a
multi-frame instance whose frames are tiles of ``Rows`` x ``Columns`` pixels over a total pixel
matrix of ``TotalPixelMatrixColumns`` x ``TotalPixelMatrixRows`` (edge tiles stored padded).
``DimensionOrganizationType`` says where each frame lies (PS3.3 C.7.6.17.3):

* ``TILED_FULL``: implicitly, across a row of tiles first, then down, then through focal
  planes, then optical paths;
* ``TILED_SPARSE``: in each frame's ``PlanePositionSlideSequence`` (1-based pixel positions),
  with tiles that hold nothing left out.

:func:`describe_slide` reads all of that from an image set's metadata once; nothing here fetches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import MetadataError, NotASlideError
from ..metadata import ImageSetMetadata, InstanceMetadata, PixelDescription
from ..metadata import values as dicom_values

#: VL Whole Slide Microscopy Image Storage.
WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
#: ImageType value 3 of a pyramid level; the others name associated images.
VOLUME = "VOLUME"
ASSOCIATED = ("LABEL", "OVERVIEW", "THUMBNAIL")


@dataclass(frozen=True)
class SlideImage:
    """One instance of a slide: a pyramid level or an associated image, and where each tile is.

    ``tiles[row, column]`` is the 0-based frame holding that tile (for the chosen optical path and
    focal plane), -1 where the slide stores none (TILED_SPARSE leaves empty tiles out).
    """

    sop_instance_uid: str
    kind: str
    width: int
    height: int
    tile_width: int
    tile_height: int
    #: µm per pixel along x (a row) and y (a column), when the instance gives its pixel spacing.
    mpp: tuple[float, float] | None
    tiles: np.ndarray
    frame_ids: tuple[str, ...]
    checksums: tuple[int | None, ...]
    stored_transfer_syntax: str
    pixel: PixelDescription

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the whole image."""
        return self.width, self.height

    @property
    def tile_size(self) -> tuple[int, int]:
        """(width, height) of a tile, edge tiles included (they are stored padded)."""
        return self.tile_width, self.tile_height

    @property
    def tile_grid(self) -> tuple[int, int]:
        """(tiles across, tiles down)."""
        return int(self.tiles.shape[1]), int(self.tiles.shape[0])


@dataclass(frozen=True)
class SlidePyramid:
    """Levels largest first, associated images by kind (``"label"``, ``"overview"``, ``"thumbnail"``)."""

    series_instance_uid: str
    levels: tuple[SlideImage, ...]
    associated: Mapping[str, SlideImage]
    optical_path: str
    focal_plane: int
    properties: Mapping[str, str]


def _text(dicom: Mapping[str, Any], keyword: str) -> str:
    value = dicom.get(keyword)
    if isinstance(value, list):
        value = value[0] if value else None
    return str(value).strip() if value is not None else ""


def _integer(dicom: Mapping[str, Any], keyword: str, default: int) -> int:
    found = dicom_values.integer(dicom.get(keyword))
    return found if found is not None and found > 0 else default


def image_kind(instance: InstanceMetadata) -> str:
    """ImageType value 3 (``VOLUME``, ``LABEL``, ``OVERVIEW``, ``THUMBNAIL``), ``VOLUME`` when absent."""
    image_type = instance.dicom.get("ImageType")
    if isinstance(image_type, list) and len(image_type) > 2 and str(image_type[2]).strip():
        return str(image_type[2]).strip().upper()
    return VOLUME


def _items(value: Any) -> list[Mapping[str, Any]]:
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, list) else []


def optical_paths(instance: InstanceMetadata) -> list[str]:
    """The OpticalPathIdentifiers an instance holds, in its OpticalPathSequence's order ("1" when none)."""
    found = [_text(item, "OpticalPathIdentifier") for item in _items(instance.dicom.get("OpticalPathSequence"))]
    return [path for path in found if path] or ["1"]


def _sparse_positions(dicom: Mapping[str, Any], frames: int) -> list[tuple[int, int, float, str]]:
    """(column, row, z, optical path) of each frame of a TILED_SPARSE instance (0-based pixels)."""
    groups = _items(dicom.get("PerFrameFunctionalGroupsSequence"))
    if len(groups) != frames:
        raise MetadataError(f"a TILED_SPARSE instance lists {len(groups)} frame positions for {frames} frames")
    positions = []
    for number, group in enumerate(groups, start=1):
        plane = next(iter(_items(group.get("PlanePositionSlideSequence"))), {})
        column = dicom_values.integer(plane.get("ColumnPositionInTotalImagePixelMatrix"))
        row = dicom_values.integer(plane.get("RowPositionInTotalImagePixelMatrix"))
        if column is None or row is None:
            raise MetadataError(f"frame {number} of a TILED_SPARSE instance has no position in the pixel matrix")
        z = dicom_values.number(plane.get("ZOffsetInSlideCoordinateSystem"))
        path = next(iter(_items(group.get("OpticalPathIdentificationSequence"))), {})
        positions.append((column - 1, row - 1, 0.0 if z is None else z, _text(path, "OpticalPathIdentifier")))
    return positions


def tile_frames(
    instance: InstanceMetadata, size: tuple[int, int], tile: tuple[int, int], optical_path: str, focal_plane: int
) -> np.ndarray:
    """``(tiles down, tiles across)`` frame indices of one optical path and focal plane, -1 where none."""
    (width, height), (tile_width, tile_height) = size, tile
    across, down = -(-width // tile_width), -(-height // tile_height)
    grid = np.full((down, across), -1, dtype=np.int64)
    frames = len(instance.frames)
    paths = optical_paths(instance)
    if _text(instance.dicom, "DimensionOrganizationType").upper() == "TILED_SPARSE":
        positions = _sparse_positions(instance.dicom, frames)
        depths = sorted({z for _, _, z, _ in positions})
        chosen_z = depths[min(focal_plane, len(depths) - 1)]
        for frame, (column, row, z, path) in enumerate(positions):
            if z == chosen_z and (path or paths[0]) == optical_path and 0 <= row < height and 0 <= column < width:
                grid[row // tile_height, column // tile_width] = frame
        return grid
    # TILED_FULL: across a row first, then down, then focal planes, then optical paths.
    per_plane = across * down
    planes = _integer(instance.dicom, "TotalPixelMatrixFocalPlanes", 1)
    first = (paths.index(optical_path) * planes + min(focal_plane, planes - 1)) * per_plane
    if first + per_plane > frames:
        raise MetadataError(
            f"instance {instance.sop_instance_uid} has {frames} frames, fewer than its {across} x {down} tiles "
            f"per plane ({planes} focal plane(s), {len(paths)} optical path(s)) need"
        )
    return np.arange(first, first + per_plane, dtype=np.int64).reshape(down, across)


def _image(instance: InstanceMetadata, kind: str, optical_path: str, focal_plane: int) -> SlideImage:
    dicom = instance.dicom
    if instance.pixel is None:
        raise MetadataError(f"slide instance {instance.sop_instance_uid} has no pixel description")
    tile = (instance.pixel.columns, instance.pixel.rows)
    size = (
        _integer(dicom, "TotalPixelMatrixColumns", tile[0]),
        _integer(dicom, "TotalPixelMatrixRows", tile[1]),
    )
    spacing = instance.pixel_spacing  # (row spacing, column spacing) in mm, from the shared functional group
    return SlideImage(
        sop_instance_uid=instance.sop_instance_uid,
        kind=kind,
        width=size[0],
        height=size[1],
        tile_width=tile[0],
        tile_height=tile[1],
        mpp=(spacing[1] * 1000, spacing[0] * 1000) if spacing else None,
        tiles=tile_frames(instance, size, tile, optical_path, focal_plane),
        frame_ids=tuple(frame.id for frame in instance.frames),
        checksums=tuple(frame.full_checksum for frame in instance.frames),
        stored_transfer_syntax=instance.stored_transfer_syntax,
        pixel=instance.pixel,
    )


def _slide_series(image_set: ImageSetMetadata, series_instance_uid: str | None) -> list[InstanceMetadata]:
    candidates = [
        series
        for series in image_set.series
        if series_instance_uid in (None, series.series_instance_uid)
        and any(instance.sop_class_uid == WSI_STORAGE for instance in series.instances)
    ]
    if not candidates:
        where = f"series {series_instance_uid} of " if series_instance_uid else ""
        raise NotASlideError(
            f"{where}image set {image_set.image_set_id} holds no whole-slide image (SOP class {WSI_STORAGE})"
        )
    return [instance for instance in candidates[0].instances if instance.sop_class_uid == WSI_STORAGE]


def describe_slide(
    image_set: ImageSetMetadata,
    *,
    series_instance_uid: str | None = None,
    optical_path: int | str = 0,
    focal_plane: int = 0,
) -> SlidePyramid:
    """The pyramid of the slide in ``image_set`` (its first whole-slide series unless one is named).

    ``optical_path`` is an index into the level-0 instance's optical paths or an
    OpticalPathIdentifier; ``focal_plane`` an index into its focal planes, nearest the glass first.
    """
    instances = _slide_series(image_set, series_instance_uid)
    volumes = [instance for instance in instances if image_kind(instance) == VOLUME]
    if not volumes:
        raise MetadataError(f"the slide in image set {image_set.image_set_id} has no pyramid level (ImageType VOLUME)")
    volumes.sort(key=lambda instance: -_integer(instance.dicom, "TotalPixelMatrixColumns", 0))
    paths = optical_paths(volumes[0])
    path = paths[optical_path] if isinstance(optical_path, int) and optical_path < len(paths) else str(optical_path)
    if path not in paths:
        raise MetadataError(f"the slide has optical paths {paths}, not {optical_path!r}")
    levels: list[SlideImage] = []
    for instance in volumes:
        if path not in optical_paths(instance):
            continue  # a level of another optical path
        image = _image(instance, VOLUME, path, focal_plane)
        if levels and image.width == levels[-1].width:
            continue  # another focal plane or a duplicate of a level already taken
        levels.append(image)
    associated = {}
    for instance in instances:
        kind = image_kind(instance)
        if kind in ASSOCIATED and kind.lower() not in associated:
            associated[kind.lower()] = _image(instance, kind, optical_paths(instance)[0], 0)
    first = volumes[0].dicom
    return SlidePyramid(
        series_instance_uid=volumes[0].series_instance_uid,
        levels=tuple(levels),
        associated=associated,
        optical_path=path,
        focal_plane=focal_plane,
        properties=_properties({**image_set.patient, **image_set.study, **first}, levels),
    )


def _properties(dicom: Mapping[str, Any], levels: Sequence[SlideImage]) -> dict[str, str]:
    """OpenSlide's property names where they exist, DICOM keywords under ``dicom.`` otherwise."""
    properties = {"openslide.vendor": "dicom", "openslide.level-count": str(len(levels))}
    if levels[0].mpp is not None:
        properties["openslide.mpp-x"], properties["openslide.mpp-y"] = (repr(value) for value in levels[0].mpp)
    for number, level in enumerate(levels):
        prefix = f"openslide.level[{number}]"
        properties.update(
            {
                f"{prefix}.width": str(level.width),
                f"{prefix}.height": str(level.height),
                f"{prefix}.tile-width": str(level.tile_width),
                f"{prefix}.tile-height": str(level.tile_height),
            }
        )
    for keyword in ("ContainerIdentifier", "Manufacturer", "PatientID", "StudyInstanceUID", "SeriesInstanceUID"):
        if _text(dicom, keyword):
            properties[f"dicom.{keyword}"] = _text(dicom, keyword)
    return properties
