"""Synthetic whole-slide images (DICOM VL Whole Slide Microscopy) whose every pixel says where it is.

One instance per pyramid level (each half the size of the one before), tiles of ``tile`` x
``tile_height`` pixels (square unless a height is given) with padded edge tiles, TILED_FULL
(implicit tile order) or TILED_SPARSE (each frame's position in its functional group; frames
stored shuffled, tiles without tissue left out), and optional LABEL and OVERVIEW images.
Install ``ahi-torch[local]`` (pydicom):

>>> from ahi_torch.sample.slides import SlideSpec, write_slide, slide_pixels
>>> paths = write_slide("data/slide1", SlideSpec(width=1000, height=700))
>>> level0 = slide_pixels(SlideSpec(width=1000, height=700), level=0)   # (700, 1000, 3) uint8

The pattern: a "tissue" disc of saturated colour whose channels code the pixel's position
(:func:`position_code`), on grey background whose brightness also varies with position, so a
misplaced, mirrored or transposed tile changes the pixels and a tissue mask has something to find.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..slides import WSI_STORAGE
from .synthetic import SeriesSpec, _base_dataset, uid

EXPLICIT_LITTLE = "1.2.840.10008.1.2.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
#: How tiles are laid out (DICOM PS3.3 C.7.6.17.3).
ORGANIZATIONS = ("TILED_FULL", "TILED_SPARSE")
#: Associated images a slide can carry besides its pyramid (ImageType value 3).
ASSOCIATED = ("LABEL", "OVERVIEW", "THUMBNAIL")


@dataclass(frozen=True)
class SlideSpec:
    """What :func:`write_slide` writes; the defaults make a small 3-level slide with ragged edges."""

    width: int = 1000
    height: int = 700
    tile: int = 256
    #: Tile rows when they differ from ``tile`` (the tile's width): readers must not mix the axes up.
    tile_height: int | None = None
    levels: int = 3
    #: µm per pixel at level 0.
    mpp: float = 0.25
    transfer_syntax: str = EXPLICIT_LITTLE
    organization: str = "TILED_FULL"
    associated: tuple[str, ...] = ("LABEL", "OVERVIEW")
    series: SeriesSpec = field(
        default_factory=lambda: SeriesSpec(
            patient_id="SLIDE-0001", study_key="pathology-1", series_key="slide-1", modality="SM", description="Slide"
        )
    )

    def __post_init__(self) -> None:
        if self.organization not in ORGANIZATIONS:
            raise ValueError(f"organization must be one of {', '.join(ORGANIZATIONS)}, not {self.organization!r}")
        if self.transfer_syntax not in (EXPLICIT_LITTLE, JPEG_BASELINE):
            raise ValueError("transfer_syntax must be explicit VR little endian or JPEG baseline")
        unknown = set(self.associated) - set(ASSOCIATED)
        if unknown:
            raise ValueError(f"associated images are {', '.join(ASSOCIATED)}, not {sorted(unknown)}")

    @property
    def tile_size(self) -> tuple[int, int]:
        """(width, height) of a tile."""
        return self.tile, self.tile_height or self.tile

    def level_size(self, level: int) -> tuple[int, int]:
        """(width, height) of ``level``: level 0 halved ``level`` times, rounded up."""
        return -(-self.width // 2**level), -(-self.height // 2**level)


def position_code(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A colour per level-0 position, (..., 3) uint8: channels step with x, with y, and with both."""
    return np.stack([x % 97, y % 89, (x // 97 + 3 * (y // 89)) % 64], axis=-1).astype(np.uint8)


def _tissue(spec: SlideSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    centre_x, centre_y, radius = spec.width / 2, spec.height / 2, 0.4 * min(spec.width, spec.height)
    return np.asarray((x - centre_x) ** 2 + (y - centre_y) ** 2 <= radius**2)


def slide_pixels(spec: SlideSpec, level: int = 0) -> np.ndarray:
    """The (height, width, 3) uint8 pixels of a level: level 0 sampled every 2**level pixels."""
    width, height = spec.level_size(level)
    y, x = np.mgrid[0:height, 0:width] * 2**level
    tissue = _tissue(spec, x, y)
    grey = (200 + (7 * x + 13 * y) % 50).astype(np.uint8)
    pixels = np.repeat(grey[..., None], 3, axis=-1)
    pixels[tissue] = position_code(x[tissue], y[tissue]) + np.array([150, 30, 110], dtype=np.uint8)
    return pixels


def stored_tiles(spec: SlideSpec, level: int = 0) -> np.ndarray:
    """Which tiles (down, across) the slide stores: all for TILED_FULL; for TILED_SPARSE those with tissue."""
    width, height = spec.level_size(level)
    tile_width, tile_height = spec.tile_size
    across, down = -(-width // tile_width), -(-height // tile_height)
    if spec.organization == "TILED_FULL":
        return np.ones((down, across), dtype=bool)
    y, x = np.mgrid[0:height, 0:width] * 2**level
    tissue = np.zeros((down * tile_height, across * tile_width), dtype=bool)
    tissue[:height, :width] = _tissue(spec, x, y)
    stored = np.asarray(tissue.reshape(down, tile_height, across, tile_width).any(axis=(1, 3)))
    return stored if stored.any() else np.ones_like(stored)


def _tiles(pixels: np.ndarray, tile: tuple[int, int]) -> list[tuple[int, int, np.ndarray]]:
    """(column, row, tile) of every tile position, row by row; edge tiles padded with white."""
    height, width = pixels.shape[:2]
    tile_width, tile_height = tile
    tiles = []
    for row in range(0, height, tile_height):
        for column in range(0, width, tile_width):
            block = np.full((tile_height, tile_width, 3), 255, dtype=np.uint8)
            part = pixels[row : row + tile_height, column : column + tile_width]
            block[: part.shape[0], : part.shape[1]] = part
            tiles.append((column, row, block))
    return tiles


def _wsi_dataset(spec: SlideSpec, index: int, image_type: str, size: tuple[int, int], tile: tuple[int, int]):  # type: ignore[no-untyped-def]
    from pydicom.dataset import Dataset

    ds = _base_dataset(spec.series, WSI_STORAGE, spec.series.sop_uid(index), index + 1)
    ds.Modality = "SM"
    ds.ImageType = ["ORIGINAL" if index == 0 else "DERIVED", "PRIMARY", image_type, "NONE"]
    ds.ContainerIdentifier = f"{spec.series.patient_id}-slide"
    ds.DimensionOrganizationType = spec.organization if image_type == "VOLUME" else "TILED_FULL"
    ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows = size
    ds.TotalPixelMatrixFocalPlanes = 1
    ds.NumberOfOpticalPaths = 1
    path = Dataset()
    path.OpticalPathIdentifier = "1"
    ds.OpticalPathSequence = [path]
    ds.Columns, ds.Rows = tile
    ds.SamplesPerPixel = 3
    ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.ImagedVolumeWidth, ds.ImagedVolumeHeight = spec.width * spec.mpp / 1000, spec.height * spec.mpp / 1000
    ds.FrameOfReferenceUID = uid("slide-for", spec.series.patient_id, spec.series.series_key)
    return ds


def _shared_spacing(ds, millimetres: float) -> None:  # type: ignore[no-untyped-def]
    from pydicom.dataset import Dataset

    measures = Dataset()
    measures.PixelSpacing = [f"{millimetres:.10g}", f"{millimetres:.10g}"]
    measures.SliceThickness = "0.001"
    shared = Dataset()
    shared.PixelMeasuresSequence = [measures]
    ds.SharedFunctionalGroupsSequence = [shared]


def _sparse_positions(ds, placed: list[tuple[int, int, np.ndarray]]) -> None:  # type: ignore[no-untyped-def]
    from pydicom.dataset import Dataset

    groups = []
    for column, row, _ in placed:
        position = Dataset()
        position.ColumnPositionInTotalImagePixelMatrix = column + 1
        position.RowPositionInTotalImagePixelMatrix = row + 1
        position.XOffsetInSlideCoordinateSystem = "0"
        position.YOffsetInSlideCoordinateSystem = "0"
        position.ZOffsetInSlideCoordinateSystem = "0"
        group = Dataset()
        group.PlanePositionSlideSequence = [position]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups


def _store_frames(ds, frames: list[np.ndarray], transfer_syntax: str) -> None:  # type: ignore[no-untyped-def]
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    ds.NumberOfFrames = len(frames)
    if transfer_syntax == JPEG_BASELINE:
        import imagecodecs

        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.PixelData = encapsulate([bytes(imagecodecs.jpeg8_encode(f, level=95, subsampling="422")) for f in frames])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
        ds.file_meta.TransferSyntaxUID = UID(JPEG_BASELINE)
        return
    ds.PhotometricInterpretation = "RGB"
    ds.PixelData = np.ascontiguousarray(np.stack(frames)).tobytes()
    ds["PixelData"].VR = "OB"


def write_slide(directory: str | Path, spec: SlideSpec = SlideSpec()) -> list[Path]:
    """Write the slide's levels (then its associated images) as DICOM files; returns their paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for level in range(spec.levels):
        size = spec.level_size(level)
        stored = stored_tiles(spec, level).reshape(-1)
        placed = [
            tile for tile, kept in zip(_tiles(slide_pixels(spec, level), spec.tile_size), stored, strict=True) if kept
        ]
        ds = _wsi_dataset(spec, level, "VOLUME", size, spec.tile_size)
        _shared_spacing(ds, spec.mpp * 2**level / 1000)
        if spec.organization == "TILED_SPARSE":
            # Stored out of order, background tiles left out: readers must use the frames' positions.
            placed = [placed[i] for i in np.random.default_rng(level).permutation(len(placed))]
            _sparse_positions(ds, placed)
        _store_frames(ds, [block for _, _, block in placed], spec.transfer_syntax)
        paths.append(_save(ds, directory / f"{spec.series.series_key}-level{level}.dcm"))
    for offset, kind in enumerate(spec.associated):
        image = associated_pixels(spec, kind)
        height, width = image.shape[:2]
        ds = _wsi_dataset(spec, spec.levels + offset, kind, (width, height), (width, height))
        _shared_spacing(ds, spec.mpp * spec.width / width / 1000)
        _store_frames(ds, [image], spec.transfer_syntax)
        paths.append(_save(ds, directory / f"{spec.series.series_key}-{kind.lower()}.dcm"))
    return paths


def associated_pixels(spec: SlideSpec, kind: str) -> np.ndarray:
    """The pixels of an associated image: a flat colour per kind with a dark bar (64 x 96, or the thumbnail)."""
    if kind == "THUMBNAIL":
        return slide_pixels(spec, spec.levels - 1)
    colour = {"LABEL": (240, 230, 140), "OVERVIEW": (180, 200, 230)}[kind]
    image = np.empty((64, 96, 3), dtype=np.uint8)
    image[:] = colour
    image[20:30, 10:80] = 20
    return image


def _save(ds, path: Path) -> Path:  # type: ignore[no-untyped-def]
    ds.save_as(path, enforce_file_format=True)
    return path


def write_slides(directory: str | Path, count: int) -> Path:
    """``count`` slides under ``directory/slides`` (one patient each, alternately TILED_FULL and TILED_SPARSE)
    and ``directory/slide-labels.csv`` (SeriesInstanceUID, diagnosis: tumour or normal); returns the CSV's path.
    """
    import csv

    directory = Path(directory)
    rows = []
    for number in range(count):
        key = f"slide-{number}"
        series = SeriesSpec(patient_id=f"SLIDE-{number:04d}", study_key=key, series_key=key, modality="SM")
        spec = SlideSpec(organization=ORGANIZATIONS[number % 2], series=series)
        write_slide(directory / "slides" / series.series_key, spec)
        rows.append((series.series_uid, "tumour" if number % 2 else "normal"))
    labels = directory / "slide-labels.csv"
    with labels.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SeriesInstanceUID", "diagnosis"])
        writer.writerows(rows)
    return labels
