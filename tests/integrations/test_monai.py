"""MONAI: LoadAHId agrees with MONAI's own PydicomReader, and caching datasets never fetch to hash."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from ahi_torch.cache import FrameCache
from ahi_torch.datasets import FrameDataset, VolumeDataset
from ahi_torch.errors import ConfigError
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import SeriesSpec, oblique, write_series

monai = pytest.importorskip("monai")
from monai.data import CacheDataset, DataLoader, Dataset, MetaTensor, PersistentDataset  # noqa: E402
from monai.transforms import (  # noqa: E402
    Compose,
    LoadImaged,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)

from ahi_torch.integrations.monai import LoadAHId, references, to_metatensor  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs"
# Sagittal-oblique and axial series, InstanceNumber in spatial order: MONAI's PydicomReader sorts by
# InstanceNumber, so only such series give it the right volume to compare with.
SPECS = {
    "oblique": SeriesSpec(
        patient_id="MON-1", series_key="oblique", slices=14, rows=40, columns=36, orientation=oblique(20.0), nodule=True
    ),
    "axial": SeriesSpec(
        patient_id="MON-2", series_key="axial", slices=10, rows=32, columns=48, pixel_spacing=(0.7, 0.9), nodule=True
    ),
}
# Imported with scrambled InstanceNumbers; MONAI reads the same slices numbered in spatial order.
SCRAMBLED = SeriesSpec(
    patient_id="MON-3",
    series_key="scrambled",
    slices=12,
    rows=24,
    columns=28,
    orientation=oblique(-25.0),
    shuffle_instance_numbers=True,
    nodule=True,
)


def post_transforms() -> list:
    return [
        Orientationd("image", axcodes="RAS", labels=None),
        Spacingd("image", pixdim=(1.0, 1.0, 2.0)),
        ScaleIntensityRanged("image", a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True),
    ]


@pytest.fixture(scope="module")
def imported(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("monai")
    for name, spec in SPECS.items():
        write_series(root / name, spec)
    spatial = root.parent / f"{root.name}-spatial"
    spatial.mkdir()
    for number, path in enumerate(write_series(root / "scrambled", SCRAMBLED), start=1):  # geometric order
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(spatial / path.name, enforce_file_format=True)
    result = ahi.import_dicom(root)
    assert result.status == "COMPLETED", result.message
    index = build_index(ahi.client(), result.datastore_id, progress=False)
    return {"root": root, "index": index}


def series_dir(imported: dict, index: FrameIndex, uri: str) -> Path:
    series_uid = uri.split("/")[4].split("?", maxsplit=1)[0]
    if series_uid == SCRAMBLED.series_uid:  # MONAI stacks by InstanceNumber: give it spatial numbers
        return imported["root"].parent / f"{imported['root'].name}-spatial"
    name = next(n for n, spec in SPECS.items() if spec.series_uid == series_uid)
    return imported["root"] / name


def test_references_carry_the_label_and_every_other_column(ahi: LocalAHI, imported: dict) -> None:
    index = imported["index"]
    volumes = index.volumes()
    data = references(index, label="patient_id", columns=("patient_id", "modality"))
    assert len(data) == len(volumes) == 3
    assert all(set(entry) == {"image", "label", "modality"} for entry in data), "the label column once, as label"
    assert [entry["label"] for entry in data] == [index.texts("patient_id")[int(v.rows[0])] for v in volumes]
    assert [entry["modality"] for entry in data] == [index.texts("modality")[int(v.rows[0])] for v in volumes]
    by_modality = references(index, label="modality")  # a column that sorts after the label is kept too
    assert all(set(entry) == {"image", "label", "patient_id"} for entry in by_modality)
    with pytest.raises(ConfigError, match="no column 'scanner'"):
        references(index, columns=("scanner",))
    with pytest.raises(ConfigError, match="brings its own labels"):
        references(VolumeDataset(index, ahi.client(), labels="patient_id"), label="patient_id")
    from_dataset = references(VolumeDataset(index, ahi.client()), columns=("patient_id",))
    assert [entry["image"] for entry in from_dataset] == [entry["image"] for entry in data], "the same volumes"
    assert all(set(entry) == {"image", "patient_id"} for entry in from_dataset), "no labels, no label key"


def test_load_ahid_matches_monai_pydicom_reader(ahi: LocalAHI, imported: dict, tmp_path: Path) -> None:
    index = imported["index"]
    data = references(index, label="patient_id")
    assert len(data) == 3 and all(d["image"].startswith("ahi://") and "?version=1" in d["image"] for d in data)
    ours = Compose(
        [
            LoadAHId("image", index=index, source=FrameFetcher(ahi.client(), cache=FrameCache(tmp_path))),
            *post_transforms(),
        ]
    )
    theirs = Compose([LoadImaged("image", reader="PydicomReader", ensure_channel_first=True), *post_transforms()])
    for entry in data:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # MONAI's own deprecation and nvImageCodec notices
            mine = ours(dict(entry))["image"]
            reference = theirs({"image": str(series_dir(imported, index, entry["image"]))})["image"]
        assert isinstance(mine, MetaTensor) and mine.shape == reference.shape
        np.testing.assert_allclose(mine.affine.numpy(), reference.affine.numpy(), atol=1e-6)
        np.testing.assert_allclose(mine.numpy(), reference.numpy(), atol=1e-5)
        assert float(mine.std()) > 0.05, "a real image, not a constant"
        assert mine.meta["space"] == "RAS" and mine.meta["filename_or_obj"] == entry["image"]


def test_to_metatensor_puts_every_voxel_where_pydicom_says(ahi: LocalAHI, imported: dict) -> None:
    index = imported["index"]
    volumes = VolumeDataset(index, ahi.client(), rescale=False, dtype=None)
    for index in range(len(volumes)):
        item = volumes[index]
        image = to_metatensor(item)
        d, h, w = item["image"].shape[1:]
        assert image.shape == (1, w, h, d) and tuple(image.meta["spatial_shape"]) == (w, h, d)
        specs = {**SPECS, "scrambled": SCRAMBLED}
        name = next(n for n, spec in specs.items() if spec.series_uid == item["meta"]["series_instance_uid"])
        files = sorted((imported["root"] / name).glob("*.dcm"))
        for path in (files[0], files[-1]):
            ds = pydicom.dcmread(path)
            normal = np.cross(np.array(ds.ImageOrientationPatient[:3], float), ds.ImageOrientationPatient[3:])
            k = int(
                np.argmin(
                    [
                        abs(
                            np.dot(normal, np.array(pydicom.dcmread(f).ImagePositionPatient, float))
                            - np.dot(normal, np.array(ds.ImagePositionPatient, float))
                        )
                        for f in files
                    ]
                )
            )
            row, column = 5, 3
            lps = (
                np.array(ds.ImagePositionPatient, float)
                + row * float(ds.PixelSpacing[0]) * np.array(ds.ImageOrientationPatient[3:], float)
                + column * float(ds.PixelSpacing[1]) * np.array(ds.ImageOrientationPatient[:3], float)
            )
            ras = image.affine.numpy() @ np.array([column, row, k, 1.0])
            np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-4)
            assert int(image[0, column, row, k]) == int(ds.pixel_array[row, column])


def test_caching_datasets_hash_references_and_never_refetch(ahi: LocalAHI, imported: dict, tmp_path: Path) -> None:
    index = imported["index"]
    frames = len(index)
    load = LoadAHId("image", index=index, source=FrameFetcher(ahi.client(), cache=FrameCache(tmp_path / "frames")))
    transform = Compose([load, Orientationd("image", axcodes="RAS", labels=None)])
    data = references(VolumeDataset(index, ahi.client(), labels="patient_id"))
    assert sorted(d["label"] for d in data) == [0, 1, 2] and all(d["image"].startswith("ahi://") for d in data)

    def fetched() -> int:
        return ahi.request_counts().get("GetImageFrame", 0)

    start = fetched()
    # track_meta keeps the MetaTensor (and its affine) in MONAI's on-disk cache.
    persistent = PersistentDataset(
        data, transform, cache_dir=tmp_path / "persistent", track_meta=True, weights_only=False
    )
    assert fetched() == start, "building a PersistentDataset hashes references, not pixels"
    first = [persistent[i]["image"] for i in range(len(persistent))]
    assert fetched() - start == frames
    again = [persistent[i]["image"] for i in range(len(persistent))]
    assert fetched() - start == frames, "the second pass is served from MONAI's persistent cache"
    for a, b in zip(first, again, strict=True):
        assert isinstance(b, MetaTensor)
        torch.testing.assert_close(a.as_tensor(), b.as_tensor())
        torch.testing.assert_close(a.affine, b.affine)

    cached = CacheDataset(data, transform, cache_rate=1.0, num_workers=0, progress=False)
    assert fetched() - start == frames, "CacheDataset's first load comes from the ahi_torch frame cache"
    loader = DataLoader(Dataset(data, transform), batch_size=1, num_workers=2)
    batches = list(loader)
    assert fetched() - start == frames, "workers share the frame cache too"
    assert len(batches) == len(cached) == 3
    torch.testing.assert_close(batches[0]["image"][0].as_tensor(), cached[0]["image"].as_tensor())


def test_stale_or_unknown_references_fail_clearly(ahi: LocalAHI, imported: dict) -> None:
    index = imported["index"]
    load = LoadAHId("image", index=index, source=ahi.client())
    uri = references(index)[0]["image"]
    with pytest.raises(ConfigError, match="names version 7, the index holds version 1"):
        load({"image": uri.replace("?version=1", "?version=7")})
    with pytest.raises(ConfigError, match="not a series reference"):
        load({"image": "/data/ct.nii.gz"})
    with pytest.raises(ConfigError, match="skip"):
        LoadAHId("image", index=index, source=ahi.client(), error_policy="skip")


def test_frames_become_2d_metatensors(ahi: LocalAHI, imported: dict) -> None:
    item = FrameDataset(imported["index"], ahi.client())[3]
    image = to_metatensor(item)
    h, w = item["image"].shape[1:]
    assert image.shape == (1, w, h)
    lps = item["meta"]["affine"].numpy() @ np.array([7, 2, 0, 1.0])
    ras = image.affine.numpy() @ np.array([2, 7, 0, 1.0])
    np.testing.assert_allclose(ras[:3], lps[:3] * [-1, -1, 1])
    assert image.meta["filename_or_obj"].endswith(f"&frame={item['meta']['frame_id']}")


def test_figure_three_planes_before_and_after_spacing(ahi: LocalAHI, imported: dict) -> None:
    """Renders docs/monai-spacing.png: an oblique volume's three planes before and after Spacingd."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    index = imported["index"]
    entry = next(d for d in references(index) if SPECS["oblique"].series_uid in d["image"])
    load = LoadAHId("image", index=index, source=ahi.client())
    before = Orientationd("image", axcodes="RAS", labels=None)(load(dict(entry)))["image"]
    after = Spacingd("image", pixdim=(0.5, 0.5, 0.5))({"image": before})["image"]
    figure, axes = plt.subplots(2, 3, figsize=(9, 6))
    for row, (title, volume) in enumerate((("as loaded", before), ("Spacingd 0.5 mm", after))):
        array = volume[0].numpy()
        x, y, z = (n // 2 for n in array.shape)
        spacing = [float(s) for s in np.linalg.norm(volume.affine.numpy()[:3, :3], axis=0)]
        planes = (
            ("axial", array[:, :, z].T, spacing[1] / spacing[0]),
            ("coronal", array[:, y, :].T, spacing[2] / spacing[0]),
            ("sagittal", array[x, :, :].T, spacing[2] / spacing[1]),
        )
        for column, (name, plane, aspect) in enumerate(planes):
            axis = axes[row, column]
            axis.imshow(plane, cmap="gray", origin="lower", aspect=aspect, vmin=-1000, vmax=400)
            axis.set_title(f"{name}, {title}\n{plane.shape[1]}x{plane.shape[0]} voxels", fontsize=9)
            axis.axis("off")
    figure.suptitle("An oblique CT series from the local AHI through LoadAHId → Orientationd → Spacingd")
    figure.tight_layout()
    DOCS.mkdir(exist_ok=True)
    target = DOCS / "monai-spacing.png"
    figure.savefig(target, dpi=80, metadata={"Software": None})
    plt.close(figure)
    assert target.stat().st_size > 10_000
    np.testing.assert_allclose(np.linalg.norm(after.affine.numpy()[:3, :3], axis=0), [0.5, 0.5, 0.5], atol=1e-6)


def test_load_ahid_reads_reduced_resolutions(ahi: LocalAHI, imported: dict) -> None:
    """LoadAHId passes reduce through: half-size volumes whose spacing doubles and whose origin stays."""
    index = imported["index"]
    uri = references(index)[0]["image"]
    full = LoadAHId("image", index=index, source=ahi.client())({"image": uri})["image"]
    half = LoadAHId("image", index=index, source=FrameFetcher(ahi.client(), reduce=1))({"image": uri})["image"]
    # MONAI's axes: (channel, column, row, slice)
    assert tuple(half.shape[1:3]) == tuple(-(-s // 2) for s in full.shape[1:3])
    assert half.shape[3] == full.shape[3], "slices are not reduced"
    np.testing.assert_allclose(half.affine[:3, 3].numpy(), full.affine[:3, 3].numpy(), atol=1e-6)
    in_plane = [np.linalg.norm(m.affine[:3, :2].numpy(), axis=0) for m in (half, full)]
    np.testing.assert_allclose(in_plane[0], 2 * in_plane[1], rtol=1e-6)
