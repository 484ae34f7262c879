"""Whole-slide images through the local AHI: regions equal the source pixel for pixel; only covering tiles fetched."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ahi_torch.cache import FrameCache
from ahi_torch.errors import ConfigError, MetadataError, NotASlideError
from ahi_torch.fetch import FrameFetcher
from ahi_torch.local import LocalAHI
from ahi_torch.metadata import ImageSetMetadata
from ahi_torch.sample.slides import JPEG_BASELINE, SlideSpec, associated_pixels, slide_pixels, stored_tiles, write_slide
from ahi_torch.sample.synthetic import SeriesSpec
from ahi_torch.slides import Slide, describe_slide, open_slide


@dataclass(frozen=True)
class Imported:
    spec: SlideSpec
    datastore_id: str
    image_set_id: str
    paths: list[Path]


def _spec(name: str, **options: object) -> SlideSpec:
    series = SeriesSpec(patient_id=f"PATH-{name}", study_key=name, series_key=name, modality="SM")
    return SlideSpec(series=series, **options)  # type: ignore[arg-type]


SPECS = {
    "full": _spec("full"),
    "sparse": _spec("sparse", organization="TILED_SPARSE", width=900, height=650, associated=("THUMBNAIL",)),
    "jpeg": _spec("jpeg", transfer_syntax=JPEG_BASELINE, width=600, height=520, levels=2, associated=()),
    # Tiles wider than tall, sparse: a reader that swaps rows and columns of the tile grid shows.
    "oblong": _spec(
        "oblong", organization="TILED_SPARSE", width=700, height=500, tile=256, tile_height=96, associated=()
    ),
}


@pytest.fixture(scope="module")
def slides(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Imported]:
    root = tmp_path_factory.mktemp("slides")
    datastore_id = ahi.create_datastore()
    paths = {name: write_slide(root / name, spec) for name, spec in SPECS.items()}
    result = ahi.import_dicom(root, datastore_id)
    assert result.status == "COMPLETED" and not result.failures
    client = ahi.client()
    imported = {}
    for summary in client.iter_image_sets(datastoreId=datastore_id):
        image_set_id = summary["imageSetId"]
        document = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
        patient = ImageSetMetadata.parse(document).patient_id
        name = next(name for name, spec in SPECS.items() if spec.series.patient_id == patient)
        imported[name] = Imported(SPECS[name], datastore_id, image_set_id, paths[name])
    assert set(imported) == set(SPECS)
    return imported


def _open(ahi: LocalAHI, slide: Imported, **options: object) -> Slide:
    return open_slide(ahi.client(), slide.datastore_id, slide.image_set_id, **options)  # type: ignore[arg-type]


def expected_level(spec: SlideSpec, level: int) -> np.ndarray:
    """The level as the slide stores it: the source, white where a sparse slide stores no tile."""
    pixels = slide_pixels(spec, level).copy()
    tile_width, tile_height = spec.tile_size
    for row, column in np.argwhere(~stored_tiles(spec, level)):
        pixels[row * tile_height : (row + 1) * tile_height, column * tile_width : (column + 1) * tile_width] = 255
    return pixels


def expected_region(spec: SlideSpec, level: int, left: int, top: int, width: int, height: int) -> np.ndarray:
    source = expected_level(spec, level)
    region = np.full((height, width, 3), 255, dtype=np.uint8)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + width, source.shape[1]), min(top + height, source.shape[0])
    if x0 < x1 and y0 < y1:
        region[y0 - top : y1 - top, x0 - left : x1 - left] = source[y0:y1, x0:x1]
    return region


@pytest.mark.parametrize("name", ["full", "sparse", "oblong"])
def test_every_level_equals_its_source_pixel_for_pixel(ahi: LocalAHI, slides: dict[str, Imported], name: str) -> None:
    slide, spec = _open(ahi, slides[name]), slides[name].spec
    assert slide.level_count == spec.levels
    assert slide.level_dimensions == tuple(spec.level_size(level) for level in range(spec.levels))
    for level in range(spec.levels):
        whole = slide.read_region((0, 0), level, slide.level_dimensions[level])
        np.testing.assert_array_equal(whole, expected_level(spec, level), err_msg=f"{name} level {level}")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_region_equals_the_source_across_seams_and_edges(
    ahi: LocalAHI, slides: dict[str, Imported], tmp_path_factory: pytest.TempPathFactory, data
) -> None:  # type: ignore[no-untyped-def]
    name = data.draw(st.sampled_from(["full", "sparse", "oblong"]))
    spec = slides[name].spec
    level = data.draw(st.integers(0, spec.levels - 1))
    downsample = 2**level
    width, height = data.draw(st.integers(1, 400)), data.draw(st.integers(1, 300))
    left = data.draw(st.integers(-width - 10, spec.level_size(level)[0] + 10))
    top = data.draw(st.integers(-height - 10, spec.level_size(level)[1] + 10))
    cache = FrameCache(tmp_path_factory.getbasetemp() / "slide-region-cache")
    slide = _open_cached(ahi, slides[name], cache)
    region = slide.read_region((left * downsample, top * downsample), level, (width, height))
    np.testing.assert_array_equal(region, expected_region(spec, level, left, top, width, height))


_OPENED: dict[tuple[str, str], Slide] = {}


def _open_cached(ahi: LocalAHI, slide: Imported, cache: FrameCache) -> Slide:
    key = (slide.image_set_id, str(cache.directory))
    if key not in _OPENED:
        _OPENED[key] = open_slide(FrameFetcher(ahi.client(), cache=cache), slide.datastore_id, slide.image_set_id)
    return _OPENED[key]


def test_a_location_in_level_0_pixels_reads_the_same_place_at_every_level(
    ahi: LocalAHI, slides: dict[str, Imported]
) -> None:
    slide, spec = _open(ahi, slides["full"]), slides["full"].spec
    for level in range(spec.levels):
        region = slide.read_region((400, 300), level, (32, 24))
        step = 2**level
        np.testing.assert_array_equal(
            region, slide_pixels(spec, level)[300 // step : 300 // step + 24, 400 // step : 400 // step + 32]
        )


def test_only_the_covering_tiles_are_fetched(ahi: LocalAHI, slides: dict[str, Imported]) -> None:
    slide = _open(ahi, slides["full"])  # no cache: every tile read is a request
    cases = [
        ((10, 10), 0, (100, 100), 1),  # inside one tile
        ((200, 200), 0, (100, 100), 4),  # across a corner of four
        ((0, 0), 0, (1000, 700), 12),  # the whole level: 4 x 3 tiles
        ((990, 690), 0, (50, 50), 1),  # the ragged corner tile, mostly outside
        ((-500, -500), 0, (100, 100), 0),  # outside: nothing to fetch
        ((1005, 10), 0, (50, 50), 0),  # just right of the level, inside the last tile column's padding
        ((10, 705), 0, (50, 50), 0),  # just below it
        ((600, 400), 1, (10, 10), 1),
    ]
    for location, level, size, tiles in cases:
        before = ahi.request_counts().get("GetImageFrame", 0)
        slide.read_region(location, level, size)
        fetched = ahi.request_counts().get("GetImageFrame", 0) - before
        assert fetched == tiles == slide.tiles_covering(location, level, size), (location, level, size)


def test_jpeg_baseline_tiles_are_within_jpeg_error(ahi: LocalAHI, slides: dict[str, Imported]) -> None:
    slide, imported = _open(ahi, slides["jpeg"]), slides["jpeg"]
    for level, path in enumerate(imported.paths):
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == JPEG_BASELINE and ds.PhotometricInterpretation == "YBR_FULL_422"
        whole = slide.read_region((0, 0), level, slide.level_dimensions[level])
        # pydicom's decode of the same tiles (RGB), laid out as TILED_FULL says.
        tiles = ds.pixel_array if ds.NumberOfFrames > 1 else ds.pixel_array[None]
        across = -(-ds.TotalPixelMatrixColumns // ds.Columns)
        reference = np.zeros((-(-ds.TotalPixelMatrixRows // ds.Rows) * ds.Rows, across * ds.Columns, 3), np.uint8)
        for frame, tile in enumerate(tiles):
            row, column = divmod(frame, across)
            reference[row * ds.Rows : (row + 1) * ds.Rows, column * ds.Columns : (column + 1) * ds.Columns] = tile
        reference = reference[: ds.TotalPixelMatrixRows, : ds.TotalPixelMatrixColumns]
        decoders = np.abs(whole.astype(int) - reference)
        # The same JPEG through another decoder: libjpeg builds differ only in how they upsample
        # 4:2:2 chroma, which shows at sharp colour edges (measured: mean 0.13, max 9).
        assert decoders.mean() < 0.5 and decoders.max() <= 16, "not the tiles pydicom decodes"
        error = np.abs(whole.astype(int) - slide_pixels(imported.spec, level))
        assert error.mean() < 4, f"level {level} is not the source within JPEG error (mean {error.mean():.1f})"


def test_slide_attributes_as_openslide_has_them(ahi: LocalAHI, slides: dict[str, Imported]) -> None:
    slide, spec = _open(ahi, slides["full"]), slides["full"].spec
    assert slide.dimensions == (1000, 700) and slide.level_downsamples == (1.0, 2.0, 4.0)
    assert slide.mpp == pytest.approx(spec.mpp)
    assert slide.properties["openslide.mpp-x"] == slide.properties["openslide.mpp-y"] == repr(spec.mpp)
    assert slide.properties["openslide.level[2].width"] == "250"
    assert slide.properties["dicom.PatientID"] == spec.series.patient_id
    assert [slide.get_best_level_for_downsample(d) for d in (0.5, 1.0, 1.9, 2.0, 3.5, 4.0, 64.0)] == [
        0,
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    thumbnail = slide.get_thumbnail((200, 200))
    assert thumbnail.shape == (140, 200, 3) and thumbnail.dtype == np.uint8
    assert np.abs(thumbnail.astype(int).mean(axis=(0, 1)) - slide_pixels(spec, 2).mean(axis=(0, 1))).max() < 3


def test_associated_images(ahi: LocalAHI, slides: dict[str, Imported]) -> None:
    full, sparse = _open(ahi, slides["full"]), _open(ahi, slides["sparse"])
    assert set(full.associated_images) == {"label", "overview"}
    np.testing.assert_array_equal(full.associated_images["label"], associated_pixels(SPECS["full"], "LABEL"))
    np.testing.assert_array_equal(full.associated_images["overview"], associated_pixels(SPECS["full"], "OVERVIEW"))
    assert set(sparse.associated_images) == {"thumbnail"}
    assert _open(ahi, slides["jpeg"]).associated_images == {}


def test_bad_requests_fail_clearly(ahi: LocalAHI, slides: dict[str, Imported], index_of_ct: tuple[str, str]) -> None:
    slide = _open(ahi, slides["full"])
    with pytest.raises(ConfigError, match="level 3 is not one of the slide's 3 levels"):
        slide.read_region((0, 0), 3, (10, 10))
    with pytest.raises(ConfigError, match="positive width and height"):
        slide.read_region((0, 0), 0, (0, 10))
    with pytest.raises(ConfigError, match="reduce=1"):
        open_slide(FrameFetcher(ahi.client(), reduce=1), slides["full"].datastore_id, slides["full"].image_set_id)
    with pytest.raises(NotASlideError, match="holds no whole-slide image"):
        open_slide(ahi.client(), *index_of_ct)
    with pytest.raises(MetadataError, match="optical paths"):
        _open(ahi, slides["full"], optical_path="no-such-path")


@pytest.fixture(scope="module")
def index_of_ct(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from ahi_torch.sample.synthetic import write_series

    root = tmp_path_factory.mktemp("not-a-slide")
    write_series(root, SeriesSpec(slices=2, rows=16, columns=16))
    result = ahi.import_dicom(root)
    image_set_id = next(iter(ahi.client().iter_image_sets(datastoreId=result.datastore_id)))["imageSetId"]
    return result.datastore_id, image_set_id


def _document(dicom: dict, frames: int) -> dict:
    instance = {
        "DICOM": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.6", "Rows": 10, "Columns": 10, **dicom},
        "ImageFrames": [{"ID": f"{i:032x}"} for i in range(frames)],
    }
    return {
        "SchemaVersion": "1.1",
        "DatastoreID": "d",
        "ImageSetID": "i",
        "Patient": {"DICOM": {}},
        "Study": {"DICOM": {}, "Series": {"1.2": {"DICOM": {}, "Instances": {"1.2.3": instance}}}},
    }


@pytest.mark.parametrize(("path", "plane", "first"), [(0, 0, 0), (0, 1, 6), (1, 0, 12), ("B", 1, 18)])
def test_tiled_full_frames_run_through_planes_then_optical_paths(path: int | str, plane: int, first: int) -> None:
    dicom = {
        "TotalPixelMatrixColumns": 30,
        "TotalPixelMatrixRows": 15,
        "TotalPixelMatrixFocalPlanes": 2,
        "DimensionOrganizationType": "TILED_FULL",
        "OpticalPathSequence": [{"OpticalPathIdentifier": "A"}, {"OpticalPathIdentifier": "B"}],
    }
    pyramid = describe_slide(ImageSetMetadata.parse(_document(dicom, 24)), optical_path=path, focal_plane=plane)
    np.testing.assert_array_equal(pyramid.levels[0].tiles, first + np.arange(6).reshape(2, 3))


def test_tiled_sparse_frames_are_placed_by_their_positions() -> None:
    positions = [(21, 11, "0"), (1, 1, "0"), (11, 1, "0.5"), (11, 11, "0")]  # 1-based, one on another plane
    groups = [
        {
            "PlanePositionSlideSequence": [
                {
                    "ColumnPositionInTotalImagePixelMatrix": column,
                    "RowPositionInTotalImagePixelMatrix": row,
                    "ZOffsetInSlideCoordinateSystem": z,
                }
            ]
        }
        for column, row, z in positions
    ]
    dicom = {
        "TotalPixelMatrixColumns": 30,
        "TotalPixelMatrixRows": 15,
        "DimensionOrganizationType": "TILED_SPARSE",
        "PerFrameFunctionalGroupsSequence": groups,
    }
    near = describe_slide(ImageSetMetadata.parse(_document(dicom, 4))).levels[0].tiles
    np.testing.assert_array_equal(near, [[1, -1, -1], [-1, 3, 0]])
    far = describe_slide(ImageSetMetadata.parse(_document(dicom, 4)), focal_plane=1).levels[0].tiles
    np.testing.assert_array_equal(far, [[-1, 2, -1], [-1, -1, -1]])
    with pytest.raises(MetadataError, match="lists 4 frame positions for 5 frames"):
        describe_slide(ImageSetMetadata.parse(_document(dicom, 5)))


def test_associated_images_take_their_first_optical_path() -> None:
    label = {
        "ImageType": ["ORIGINAL", "PRIMARY", "LABEL", "NONE"],
        "DimensionOrganizationType": "TILED_FULL",
        "OpticalPathSequence": [{"OpticalPathIdentifier": "A"}, {"OpticalPathIdentifier": "B"}],
    }
    document = _document({"TotalPixelMatrixColumns": 10, "TotalPixelMatrixRows": 10}, 1)
    document["Study"]["Series"]["1.2"]["Instances"]["1.2.4"] = {
        "DICOM": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.6", "Rows": 10, "Columns": 10, **label},
        "ImageFrames": [{"ID": f"{i:032x}"} for i in range(10, 12)],
    }
    pyramid = describe_slide(ImageSetMetadata.parse(document))
    np.testing.assert_array_equal(pyramid.associated["label"].tiles, [[0]])


def test_downsamples_and_mpp_without_square_pixels_or_without_spacing(ahi: LocalAHI) -> None:
    def level(width: int, height: int, spacing: list[str] | None) -> dict:
        dicom: dict = {"TotalPixelMatrixColumns": width, "TotalPixelMatrixRows": height}
        if spacing is not None:
            dicom["SharedFunctionalGroupsSequence"] = [{"PixelMeasuresSequence": [{"PixelSpacing": spacing}]}]
        return dicom

    def slide_of(*levels: dict) -> Slide:
        document = _document(levels[0], 1)
        instances = document["Study"]["Series"]["1.2"]["Instances"]
        for number, dicom in enumerate(levels[1:], start=4):
            instances[f"1.2.{number}"] = {
                "DICOM": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.77.1.6", "Rows": 10, "Columns": 10, **dicom},
                "ImageFrames": [{"ID": f"{number:032x}"}],
            }
        return Slide(ahi.client(), "d", "i", 1, describe_slide(ImageSetMetadata.parse(document)))

    oblong = slide_of(level(10, 10, ["0.0005", "0.00025"]), level(5, 5, ["0.001", "0.0005"]))
    assert oblong.mpp == pytest.approx(0.25) and oblong.properties["openslide.mpp-y"] == repr(0.5)
    assert oblong.level_downsamples == (1.0, 2.0)
    unmeasured = slide_of(level(10, 10, None), level(4, 5, None))  # OpenSlide's mean of the axes' ratios
    assert unmeasured.mpp is None and unmeasured.level_downsamples == (1.0, (10 / 4 + 10 / 5) / 2)
