"""Enhanced multi-frame instances: rescale, window and pixel measures from their functional groups (issue 22.1)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from ahi_torch.datasets import FrameDataset
from ahi_torch.index import build_index
from ahi_torch.local import LocalAHI
from ahi_torch.metadata.document import functional_value

from ..conftest import real_file

#: Enhanced (functional-group) files pydicom ships, and classic ones beside them as controls.
FILES = ["eCT_Supplemental.dcm", "emri_small.dcm", "CT_small.dcm", "MR_small.dcm"]


def _group_value(ds: pydicom.Dataset, frame: int, sequence: str, keyword: str) -> object:
    """What PS3.3 C.7.6.16 says applies to a frame: its own group, the shared one, else the top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > index and sequence in items[index]:
            item = items[index][sequence][0]
            if keyword in item:
                return item[keyword].value
    return ds.get(keyword)


def expected_values(ds: pydicom.Dataset) -> list[np.ndarray]:
    """pydicom's stored values of every frame through its own rescale (pydicom's apply_rescale ignores the groups)."""
    pixels = ds.pixel_array
    frames = pixels if int(ds.get("NumberOfFrames", 1)) > 1 else pixels[None]
    out = []
    for number, frame in enumerate(frames):
        slope = float(_group_value(ds, number, "PixelValueTransformationSequence", "RescaleSlope") or 1)
        intercept = float(_group_value(ds, number, "PixelValueTransformationSequence", "RescaleIntercept") or 0)
        out.append(frame.astype(np.float64) * slope + intercept)
    return out


@pytest.fixture(scope="module")
def imported(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("enhanced")
    for name in FILES:
        (root / name).write_bytes(real_file(name).read_bytes())
    result = ahi.import_dicom(root)
    assert result.status == "COMPLETED" and not result.failures, result.failures
    return root, result.datastore_id


@pytest.mark.parametrize("name", FILES)
def test_rescaled_frames_equal_pydicom_with_functional_groups(
    ahi: LocalAHI, imported: tuple[Path, str], name: str
) -> None:
    root, datastore_id = imported
    ds = pydicom.dcmread(root / name)
    index = build_index(ahi.client(), datastore_id, progress=False)
    mine = index.take(np.flatnonzero(np.asarray(index.texts("sop_instance_uid")) == ds.SOPInstanceUID))
    dataset = FrameDataset(mine, ahi.client(), rescale=True, dtype=None)
    expected = expected_values(ds)
    assert len(dataset) == len(expected)
    for item in (dataset[i] for i in range(len(dataset))):
        want = expected[item["meta"]["frame_number"] - 1]
        np.testing.assert_allclose(item["image"][0].numpy(), want, rtol=0, atol=1e-3, err_msg=name)
    spacing = _group_value(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    if spacing is not None:
        table = dataset.frame_index.table
        assert table.column("pixel_spacing_row").to_pylist()[0] == pytest.approx(float(spacing[0]))
        assert table.column("pixel_spacing_col").to_pylist()[0] == pytest.approx(float(spacing[1]))
    print(
        f"{name}: {len(expected)} frames, values {min(f.min() for f in expected):g}..{max(f.max() for f in expected):g}"
    )


def test_enhanced_ct_reads_hounsfield_units_and_its_spacing(ahi: LocalAHI, imported: tuple[Path, str]) -> None:
    """eCT_Supplemental.dcm read 0..1196 with 1 mm spacing; the truth is -1024..172 HU at 0.389 mm."""
    _, datastore_id = imported
    index = build_index(ahi.client(), datastore_id, progress=False)
    rows = np.flatnonzero(
        np.asarray(index.texts("sop_instance_uid")) == pydicom.dcmread(real_file(FILES[0])).SOPInstanceUID
    )
    dataset = FrameDataset(index.take(rows), ahi.client(), rescale=True, dtype=None)
    values = np.concatenate([dataset[i]["image"].numpy().ravel() for i in range(len(dataset))])
    assert values.min() == -1024 and values.max() == 172
    assert dataset.frame_index.table.column("pixel_spacing_row").to_pylist() == [pytest.approx(0.388672)] * 2
    assert dataset.frame_index.table.column("window_center").to_pylist()[0] is not None, "from FrameVOILUTSequence"


def test_functional_value_prefers_the_frame_then_the_shared_group() -> None:
    dicom = {
        "RescaleSlope": 9.0,
        "SharedFunctionalGroupsSequence": [{"PixelValueTransformationSequence": [{"RescaleSlope": 2.0}]}],
        "PerFrameFunctionalGroupsSequence": [
            {"PixelValueTransformationSequence": [{"RescaleSlope": 3.0}]},
            {"PlanePositionSequence": [{"ImagePositionPatient": [0, 0, 1]}]},
        ],
    }
    assert functional_value(dicom, "RescaleSlope") == 2.0
    assert functional_value(dicom, "RescaleSlope", 0) == 3.0
    assert functional_value(dicom, "RescaleSlope", 1) is None, "no value of its own: the instance's applies"
    assert functional_value({"RescaleSlope": 9.0}, "RescaleSlope") == 9.0


def test_frames_without_geometry_are_announced(ahi: LocalAHI, imported: tuple[Path, str]) -> None:
    """Multi-frame instances have no position of their own per frame yet: the dataset says so, once."""
    from ahi_torch.errors import MissingGeometryWarning

    _, datastore_id = imported
    index = build_index(ahi.client(), datastore_id, progress=False)
    with pytest.warns(MissingGeometryWarning, match=r"\d+ of \d+ frames have no position of their own"):
        FrameDataset(index, ahi.client())


def _pydicom_volume(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pydicom's frames of an enhanced instance stacked along the normal, rescaled per frame; their positions."""
    ds = pydicom.dcmread(path)
    orientation = np.asarray(_group_value(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient"), float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = np.asarray(
        [_group_value(ds, k, "PlanePositionSequence", "ImagePositionPatient") for k in range(ds.NumberOfFrames)], float
    )
    order = np.argsort(positions @ normal, kind="stable")
    frames = expected_values(ds)
    return np.stack([frames[k] for k in order]), positions[order], orientation


@pytest.mark.parametrize("oblique", [False, True])
@pytest.mark.parametrize("per_frame_slopes", [False, True])
def test_enhanced_volumes_are_ordered_regular_and_placed_by_their_functional_groups(
    ahi: LocalAHI, tmp_path: Path, oblique: bool, per_frame_slopes: bool
) -> None:
    """Issue 24.3: frames of an enhanced CT (in shuffled frame order) stack by their per-frame positions."""
    from ahi_torch.datasets import VolumeDataset
    from ahi_torch.sample.synthetic import SeriesSpec, write_enhanced_ct

    tilt = np.deg2rad(20)
    orientation = (1.0, 0.0, 0.0, 0.0, float(np.cos(tilt)), float(np.sin(tilt))) if oblique else (1, 0, 0, 0, 1, 0)
    spec = SeriesSpec(
        patient_id="ENH",
        series_key=f"enh{oblique}{per_frame_slopes}",
        slices=7,
        rows=12,
        columns=10,
        orientation=tuple(float(v) for v in orientation),
        pixel_spacing=(0.7, 0.9),
        slice_spacing=1.5,
    )
    slopes = tuple(1.0 + 0.5 * k for k in range(spec.slices)) if per_frame_slopes else ()
    path = write_enhanced_ct(tmp_path / "dicom", spec, slopes=slopes)
    result = ahi.import_dicom(path)
    assert result.status == "COMPLETED" and not result.failures, result.failures
    index = build_index(ahi.client(), result.datastore_id, progress=False)
    assert index.table.column("series_regular").to_pylist() == [True] * spec.slices
    volumes = VolumeDataset(index, ahi.client(), rescale=True, dtype=torch.float64)
    assert len(volumes) == 1
    item = volumes[0]
    want, positions, plane = _pydicom_volume(path)
    np.testing.assert_allclose(item["image"][0].numpy(), want, atol=1e-9)
    affine = item["meta"]["affine"].numpy()
    for k, position in enumerate(positions):
        np.testing.assert_allclose(affine @ [k, 0, 0, 1], [*position, 1], atol=1e-3)
    np.testing.assert_allclose(affine[:3, 1], plane[3:] * 0.7, atol=1e-6)  # along a column: the column cosine
    np.testing.assert_allclose(affine[:3, 2], plane[:3] * 0.9, atol=1e-6)
    np.testing.assert_allclose(item["meta"]["spacing"].numpy(), [1.5, 0.7, 0.9], atol=1e-4)


def test_real_enhanced_files_place_every_frame(ahi: LocalAHI, imported: tuple[Path, str]) -> None:
    """eCT_Supplemental.dcm: two frames 10 mm apart, each frame's position the file's own."""
    _, datastore_id = imported
    index = build_index(ahi.client(), datastore_id, progress=False)
    ds = pydicom.dcmread(real_file("eCT_Supplemental.dcm"))
    rows = np.flatnonzero(np.asarray(index.texts("sop_instance_uid")) == ds.SOPInstanceUID)
    mine = index.take(rows)
    numbers = mine.table.column("frame_number").to_pylist()
    stored = dict(zip(numbers, mine.table.column("image_position").to_pylist(), strict=True))
    for number in numbers:
        want = _group_value(ds, number - 1, "PlanePositionSequence", "ImagePositionPatient")
        np.testing.assert_allclose(stored[number], [float(v) for v in want])
    assert mine.table.column("series_regular").to_pylist() == [True, True]
    assert mine.table.column("slice_spacing").to_pylist()[0] == pytest.approx(10.0)
