"""Datasets keep one geometry convention: exact affines, irregular series flagged, reduce and float64 right."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut

from ahi_torch.datasets import ErrorPolicy, FrameDataset, VolumeDataset
from ahi_torch.errors import IrregularSeriesWarning, SampleError
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import SeriesSpec, oblique, write_series


def _renumber(paths: list[Path], drop: int | None = None, duplicate: int | None = None) -> None:
    if drop is not None:
        paths[drop].unlink()
    if duplicate is not None:
        ds = pydicom.dcmread(paths[duplicate])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID[:-3] + ".99"
        ds.InstanceNumber = 999
        ds.save_as(paths[duplicate].with_name("duplicate.dcm"), enforce_file_format=True)


@pytest.fixture(scope="module")
def series(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A regular oblique series, one with a missing slice, one with a duplicated position, an MR slope."""
    root = tmp_path_factory.mktemp("geometry")
    specs = {
        "regular": SeriesSpec(
            patient_id="GEO-1",
            series_key="regular",
            slices=8,
            rows=32,
            columns=24,
            orientation=oblique(15.0),
            shuffle_instance_numbers=True,
        ),
        "missing": SeriesSpec(patient_id="GEO-2", series_key="missing", slices=8, rows=16, columns=16),
        "duplicate": SeriesSpec(patient_id="GEO-3", series_key="duplicate", slices=6, rows=16, columns=16),
        "mr": SeriesSpec(patient_id="GEO-4", series_key="mr", modality="MR", slices=3, rows=16, columns=16),
    }
    paths = {name: write_series(root / name, spec) for name, spec in specs.items()}
    _renumber(paths["missing"], drop=4)
    _renumber(paths["duplicate"], duplicate=2)
    for path in paths["mr"]:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope, ds.RescaleIntercept = "3.774114", "-12.5"
        ds.save_as(path, enforce_file_format=True)
    result = ahi.import_dicom(root)
    assert result.status == "COMPLETED", result.message
    index = build_index(ahi.client(), result.datastore_id, progress=False)
    sources = {}
    for path in root.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        sources[ds.SOPInstanceUID] = ds
    return {"index": index, "specs": specs, "sources": sources}


def _only(index: FrameIndex, spec: SeriesSpec) -> FrameIndex:
    return index.filter(index.column("series_instance_uid") == spec.series_uid.encode())


def test_volume_affine_maps_every_voxel_to_its_dicom_position(ahi: LocalAHI, series: dict) -> None:
    spec = series["specs"]["regular"]
    item = VolumeDataset(_only(series["index"], spec), ahi.client(), rescale=False, dtype=None)[0]
    meta = item["meta"]
    assert meta["space"] == "LPS" and meta["regular"] and meta["irregularity"] == ""
    affine = meta["affine"].numpy()
    np.testing.assert_allclose(meta["spacing"].numpy(), np.linalg.norm(affine[:3, :3], axis=0))
    np.testing.assert_allclose(meta["spacing"].numpy(), [2.5, 0.8, 0.8], atol=1e-4)
    slices = [ds for ds in series["sources"].values() if ds.SeriesInstanceUID == spec.series_uid]
    normal = np.cross(np.array(slices[0].ImageOrientationPatient[:3], float), slices[0].ImageOrientationPatient[3:])
    slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    for k, ds in enumerate(slices):
        np.testing.assert_array_equal(item["image"][0, k].numpy(), ds.pixel_array)
        for row, column in ((0, 0), (31, 23), (7, 11)):
            expected = (
                np.array(ds.ImagePositionPatient, float)
                + row * float(ds.PixelSpacing[0]) * np.array(ds.ImageOrientationPatient[3:], float)
                + column * float(ds.PixelSpacing[1]) * np.array(ds.ImageOrientationPatient[:3], float)
            )
            np.testing.assert_allclose((affine @ [k, row, column, 1])[:3], expected, atol=1e-4)


def test_frame_affine_maps_pixels_to_their_dicom_position(ahi: LocalAHI, series: dict) -> None:
    spec = series["specs"]["regular"]
    dataset = FrameDataset(_only(series["index"], spec), ahi.client())
    for unit in (0, 5):
        item = dataset[unit]
        ds = series["sources"][item["meta"]["sop_instance_uid"]]
        expected = (
            np.array(ds.ImagePositionPatient, float)
            + 9 * float(ds.PixelSpacing[0]) * np.array(ds.ImageOrientationPatient[3:], float)
            + 4 * float(ds.PixelSpacing[1]) * np.array(ds.ImageOrientationPatient[:3], float)
        )
        np.testing.assert_allclose((item["meta"]["affine"].numpy() @ [9, 4, 0, 1])[:3], expected, atol=1e-4)
        np.testing.assert_allclose(item["meta"]["spacing"].numpy(), [0.8, 0.8], atol=1e-6)


def test_irregular_series_warn_by_default_and_fail_on_request(ahi: LocalAHI, series: dict) -> None:
    index, specs = series["index"], series["specs"]
    with pytest.warns(IrregularSeriesWarning) as caught:
        volumes = VolumeDataset(index, ahi.client())
    message = str(caught[0].message)
    assert "2 of 4 volumes" in message
    assert specs["missing"].series_uid in message and "1 missing slice(s): a gap of 5 mm" in message
    assert specs["duplicate"].series_uid in message and "duplicated slice position" in message
    by_series = {
        volumes.frame_table.text("series_instance_uid", int(rows[0])): unit
        for unit, rows in enumerate(volumes.volume_rows)
    }
    missing = volumes[by_series[specs["missing"].series_uid]]
    assert missing["meta"]["regular"] is False and "missing slice" in missing["meta"]["irregularity"]
    assert volumes[by_series[specs["regular"].series_uid]]["meta"]["regular"] is True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IrregularSeriesWarning)
        strict = VolumeDataset(index, ahi.client(), irregular="error")
        skipping = VolumeDataset(index, ahi.client(), irregular="error", error_policy=ErrorPolicy("skip"))
    before = ahi.request_counts().get("GetImageFrame", 0)
    with pytest.raises(SampleError, match="not an evenly spaced stack: 1 missing slice"):
        strict[by_series[specs["missing"].series_uid]]
    assert ahi.request_counts().get("GetImageFrame", 0) == before, "an irregular volume fails before fetching"
    with pytest.raises(SampleError, match="not an evenly spaced stack"):
        strict.__getitems__([by_series[specs["missing"].series_uid]])
    assert ahi.request_counts().get("GetImageFrame", 0) == before, "in a batch too"
    batch = skipping.__getitems__([by_series[specs["regular"].series_uid], by_series[specs["missing"].series_uid]])
    assert [item["meta"]["regular"] for item in batch] == [True, True]
    replaced = skipping[by_series[specs["missing"].series_uid]]
    assert replaced["meta"]["regular"] and skipping.failures.records[0].kind == "GeometryError"


def test_a_filter_that_leaves_gaps_is_flagged(ahi: LocalAHI, series: dict) -> None:
    spec = series["specs"]["regular"]
    index = _only(series["index"], spec)
    gappy = index.filter(index.column("slice_index") != 3)
    with pytest.warns(IrregularSeriesWarning, match="7 of the series' 8 slices are in the index, with gaps"):
        volumes = VolumeDataset(gappy, ahi.client())
    assert volumes[0]["meta"]["regular"] is False
    # A contiguous run of slices is a regular volume whose affine starts at its own first slice.
    full = VolumeDataset(index, ahi.client())[0]
    middle = index.filter((index.column("slice_index") >= 2) & (index.column("slice_index") <= 5))
    with warnings.catch_warnings():
        warnings.simplefilter("error", IrregularSeriesWarning)
        part = VolumeDataset(middle, ahi.client())[0]
    assert part["meta"]["regular"] and part["image"].shape[1] == 4
    torch.testing.assert_close(part["image"], full["image"][:, 2:6])
    np.testing.assert_allclose(
        part["meta"]["affine"].numpy() @ [0, 0, 0, 1], full["meta"]["affine"].numpy() @ [2, 0, 0, 1]
    )


def test_reduce_scales_the_in_plane_geometry(ahi: LocalAHI, series: dict) -> None:
    spec = series["specs"]["regular"]
    index = _only(series["index"], spec)
    full = VolumeDataset(index, ahi.client())[0]
    half = VolumeDataset(index, FrameFetcher(ahi.client(), reduce=1))[0]
    assert half["image"].shape == (1, 8, 16, 12)
    np.testing.assert_allclose(half["meta"]["spacing"].numpy(), [2.5, 1.6, 1.6], atol=1e-4)
    np.testing.assert_allclose(half["meta"]["affine"][:, 3].numpy(), full["meta"]["affine"][:, 3].numpy())
    frame = FrameDataset(index, FrameFetcher(ahi.client(), reduce=1))[0]
    np.testing.assert_allclose(frame["meta"]["spacing"].numpy(), [1.6, 1.6], atol=1e-4)


def test_float64_computes_the_rescale_in_float64(ahi: LocalAHI, series: dict) -> None:
    spec = series["specs"]["mr"]
    dataset = FrameDataset(_only(series["index"], spec), ahi.client(), dtype=torch.float64)
    item = dataset[1]
    assert item["image"].dtype == torch.float64
    ds = series["sources"][item["meta"]["sop_instance_uid"]]
    expected = apply_modality_lut(ds.pixel_array, ds).astype(np.float64)
    np.testing.assert_allclose(item["image"][0].numpy(), expected, rtol=0, atol=1e-9)
    volume = VolumeDataset(_only(series["index"], spec), ahi.client(), dtype=torch.float64)[0]
    assert volume["image"].dtype == torch.float64
    slices = sorted(
        (ds for ds in series["sources"].values() if ds.SeriesInstanceUID == spec.series_uid),
        key=lambda ds: int(ds.InstanceNumber),  # an axial series numbered in slice order
    )
    for k, sop in enumerate(slices):
        expected = apply_modality_lut(sop.pixel_array, sop).astype(np.float64)
        np.testing.assert_allclose(volume["image"][0, k].numpy(), expected, rtol=0, atol=1e-9)


def test_volume_hounsfield_units_and_window_match_pydicom(ahi: LocalAHI, series: dict) -> None:
    spec = series["specs"]["regular"]
    index = _only(series["index"], spec)
    hu = VolumeDataset(index, ahi.client())[0]["image"][0].numpy()
    windowed = VolumeDataset(index, ahi.client(), window=(40, 400))[0]["image"][0].numpy()
    dicom_window = VolumeDataset(index, ahi.client(), window="dicom")[0]["image"][0].numpy()
    slices = [ds for ds in series["sources"].values() if ds.SeriesInstanceUID == spec.series_uid]
    normal = np.cross(np.array(slices[0].ImageOrientationPatient[:3], float), slices[0].ImageOrientationPatient[3:])
    slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
    expected_hu = np.stack([apply_modality_lut(ds.pixel_array, ds).astype(np.float32) for ds in slices])
    np.testing.assert_allclose(hu, expected_hu)
    expected_window = np.clip((expected_hu - (40 - 200)) / 400, 0, 1)
    np.testing.assert_allclose(windowed, expected_window, atol=1e-6)
    np.testing.assert_allclose(dicom_window, expected_window, atol=1e-6)  # the files say center 40, width 400
    assert 0 < float(windowed.mean()) < 1 and float(hu.min()) < -1000
