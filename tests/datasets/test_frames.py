"""FrameDataset and VolumeDataset through real DataLoaders: exact pixels, labels, policies, workers."""

from __future__ import annotations

import csv
import pickle
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from pydicom.pixels import apply_modality_lut
from torch.utils.data import DataLoader

from ahi_torch.cache import FrameCache
from ahi_torch.counters import counting
from ahi_torch.datasets import (
    ErrorPolicy,
    FailureLog,
    FrameDataset,
    TableLabels,
    VolumeDataset,
    list_collate,
    pad_collate,
)
from ahi_torch.datasets.policy import replacements
from ahi_torch.errors import ConfigError, SampleError
from ahi_torch.fetch import FrameFetcher, RetryPolicy
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import demo_cohort

from ..conftest import ImportedData


@pytest.fixture(scope="module")
def cohort(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Four patients' CT series (two oblique/shuffled), nodules in odd patients."""
    root = tmp_path_factory.mktemp("dataset-cohort")
    series = demo_cohort(root, patients=4, slices=6, size=24)
    result = ahi.import_dicom(root)
    sources = {}
    for _, paths in series:
        for path in paths:
            ds = pydicom.dcmread(path)
            sources[ds.SOPInstanceUID] = ds
    labels_csv = root / "labels.csv"
    with labels_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SeriesInstanceUID", "nodule"])
        for spec, _ in series:
            writer.writerow([spec.series_uid, int(spec.nodule)])
    return {"datastore_id": result.datastore_id, "series": series, "sources": sources, "labels_csv": labels_csv}


@pytest.fixture(scope="module")
def index(ahi: LocalAHI, cohort: dict) -> FrameIndex:
    return build_index(ahi.client(), cohort["datastore_id"], progress=False)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_frames_through_dataloader_are_exact(
    ahi: LocalAHI, cohort: dict, index: FrameIndex, tmp_path: Path, context: str
) -> None:
    labels = TableLabels(cohort["labels_csv"], on="series_instance_uid", key="SeriesInstanceUID", column="nodule")
    dataset = FrameDataset(
        index, FrameFetcher(ahi.client(), cache=FrameCache(tmp_path)), labels=labels, rescale=False, dtype=None
    )
    for item in range(3):  # counted in this process before the fork: workers start with these numbers
        FrameDataset(index, ahi.client())[item]
    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context=context, persistent_workers=True)
    nodule_by_series = {spec.series_uid: int(spec.nodule) for spec, _ in cohort["series"]}
    for epoch in range(2):  # the second epoch reuses the persistent workers (and hits the cache)
        dataset.stats.reset()
        seen = 0
        for batch in loader:
            assert batch["image"].dtype == torch.int16 and batch["image"].shape[1:] == (1, 24, 24)
            for image, label, sop, series in zip(
                batch["image"],
                batch["label"],
                batch["meta"]["sop_instance_uid"],
                batch["meta"]["series_instance_uid"],
                strict=True,
            ):
                np.testing.assert_array_equal(image[0].numpy(), cohort["sources"][sop].pixel_array)
                assert int(label) == nodule_by_series[series]
                seen += 1
        assert seen == len(dataset) == 24, f"epoch {epoch}"
        written = torch.nonzero(dataset.stats.counts.sum(dim=1)).flatten().tolist()
        assert written == [1, 2], "each worker writes its own row (a shared row would lose counts to races)"
        summary = dataset.stats.summary()
        if epoch == 0:
            assert summary["requests"] == 24 and summary["cache_hits"] == 0
        else:
            assert summary["requests"] == 0 and summary["cache_hits"] == 24, "the second epoch is served from cache"


def test_rescale_gives_hounsfield_units_and_windowing(ahi: LocalAHI, cohort: dict, index: FrameIndex) -> None:
    dataset = FrameDataset(index, ahi.client())
    item = dataset[0]
    ds = cohort["sources"][item["meta"]["sop_instance_uid"]]
    np.testing.assert_allclose(item["image"][0].numpy(), apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    windowed = FrameDataset(index, ahi.client(), window=(40, 400))[0]["image"]
    hu = torch.from_numpy(apply_modality_lut(ds.pixel_array, ds).astype(np.float32))
    torch.testing.assert_close(windowed[0], ((hu - (40 - 200)) / 400).clamp(0, 1))
    dicom_window = FrameDataset(index, ahi.client(), window="dicom")[0]["image"]
    torch.testing.assert_close(dicom_window, windowed)
    assert item["meta"]["spacing"].tolist() == pytest.approx([0.8, 0.8])


def test_volumes_are_stacked_in_geometric_order(ahi: LocalAHI, cohort: dict, index: FrameIndex, tmp_path: Path) -> None:
    dataset = VolumeDataset(
        index,
        FrameFetcher(ahi.client(), cache=FrameCache(tmp_path)),
        rescale=False,
        dtype=None,
        labels="patient_id",
    )
    assert len(dataset) == 4 and dataset.classes == [spec.patient_id for spec, _ in cohort["series"]]
    loader = DataLoader(dataset, batch_size=2, num_workers=2, multiprocessing_context="spawn")
    checked = 0
    for batch in loader:
        assert batch["image"].shape == (2, 1, 6, 24, 24)
        for volume, series_uid, affine, spacing in zip(
            batch["image"],
            batch["meta"]["series_instance_uid"],
            batch["meta"]["affine"],
            batch["meta"]["spacing"],
            strict=True,
        ):
            slices = [ds for ds in cohort["sources"].values() if ds.SeriesInstanceUID == series_uid]
            iop = np.array(slices[0].ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, float))))
            expected = np.stack([ds.pixel_array for ds in slices])
            np.testing.assert_array_equal(volume[0].numpy(), expected)
            np.testing.assert_allclose(
                affine[:3, 3].numpy(), np.array(slices[0].ImagePositionPatient, float), atol=1e-4
            )
            assert spacing.tolist() == pytest.approx([2.5, 0.8, 0.8], abs=1e-3)
            checked += 1
    assert checked == 4


def test_label_sources(ahi: LocalAHI, cohort: dict, index: FrameIndex, tmp_path: Path) -> None:
    client = ahi.client()
    by_column = FrameDataset(index, client, labels="patient_id")
    assert by_column.classes == sorted({spec.patient_id for spec, _ in cohort["series"]})
    by_callable = FrameDataset(index, client, labels=lambda row: float(row["slice_index"]) / 10)
    assert by_callable[7]["label"].dtype == torch.float32
    assert float(by_callable[7]["label"]) == pytest.approx(by_callable[7]["meta"]["slice_index"] / 10)
    partial = tmp_path / "partial.csv"
    first_spec = cohort["series"][0][0]
    partial.write_text(f"series_instance_uid,label\n{first_spec.series_uid},yes\n")
    with pytest.raises(ConfigError, match="18 of 24 frames have no label"):
        FrameDataset(index, client, labels=TableLabels(partial))
    dropped = FrameDataset(index, client, labels=TableLabels(partial), unlabeled="drop")
    assert len(dropped) == 6 and dropped.classes == ["yes"]
    with pytest.raises(ConfigError, match="no column 'diagnosis'"):
        FrameDataset(index, client, labels=TableLabels(partial, column="diagnosis"))
    with pytest.raises(ConfigError, match="no index column"):
        FrameDataset(index, client, labels="NotAColumn")


@pytest.fixture
def break_frame(ahi: LocalAHI) -> Iterator[Callable[[FrameDataset, int], None]]:
    """Damage a frame's stored bytes at rest in the local AHI (restored after the test).

    One byte near the end of the codestream is flipped: the frame still decodes, to wrong pixels,
    so every fetch of it fails AHI's CRC32 check as a bad disk or a bad hop would make it.
    """
    saved: dict[Path, bytes] = {}

    def damage(dataset: FrameDataset, row: int) -> None:
        path = ahi.store.frame_path(dataset.frame_table.text("frame_id", row))
        data = saved.setdefault(path, path.read_bytes())
        damaged = bytearray(data)
        damaged[len(damaged) - 40] ^= 0x5A
        path.write_bytes(bytes(damaged))

    yield damage
    for path, data in saved.items():
        path.write_bytes(data)


def test_error_policy_raise(ahi: LocalAHI, break_frame: Callable[[FrameDataset, int], None], index: FrameIndex) -> None:
    dataset = FrameDataset(index, ahi.client())
    break_frame(dataset, 3)
    with pytest.raises(SampleError, match=r"sample 3 .*checksum mismatch"):
        dataset[3]
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    with pytest.raises(SampleError):
        list(loader)


def test_error_policy_skip_replaces_deterministically(
    ahi: LocalAHI, break_frame: Callable[[FrameDataset, int], None], index: FrameIndex, tmp_path: Path
) -> None:
    log = tmp_path / "failures.jsonl"
    dataset = FrameDataset(index, ahi.client(), error_policy=ErrorPolicy("skip", failure_log=str(log)))
    break_frame(dataset, 3)
    item = dataset[3]
    substitute = replacements(3, len(dataset), 1)[0]
    assert substitute != 3 and item["meta"]["index"] == substitute, "sample 3 is replaced by its first candidate"
    assert [(r.index, r.replaced_by, r.kind) for r in dataset.failures.records] == [(3, substitute, "ChecksumMismatch")]
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context="fork")
    dataset.stats.reset()
    indices = [i for batch in loader for i in batch["meta"]["index"].tolist()]
    assert len(indices) == len(dataset) and indices[3] == substitute and None not in indices
    summary = dataset.stats.summary()
    assert summary["items_served"] == summary["frames_served"] == len(dataset) and summary["replaced"] == 1
    logged = FailureLog.read(log)
    assert [(f["index"], f["replaced_by"]) for f in logged] == [(3, substitute), (3, substitute)]
    assert "image set" in logged[0]["where"]


def test_skip_spreads_a_run_of_dead_samples(
    ahi: LocalAHI, break_frame: Callable[[FrameDataset, int], None], index: FrameIndex
) -> None:
    dataset = FrameDataset(index, ahi.client(), error_policy="skip")
    for row in range(8):
        break_frame(dataset, row)
    served = [int(dataset[i]["meta"]["index"]) for i in range(8)]
    assert all(s >= 8 for s in served), "only working samples stand in"
    assert max(served.count(s) for s in served) <= 3, f"replacements pile onto one sample: {served}"
    assert served == [int(dataset[i]["meta"]["index"]) for i in range(8)], "and they are deterministic"


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_epoch_summary_gathers_every_worker(
    ahi: LocalAHI, break_frame: Callable[[FrameDataset, int], None], index: FrameIndex, tmp_path: Path, context: str
) -> None:
    dataset = FrameDataset(index, FrameFetcher(ahi.client(), cache=FrameCache(tmp_path)), error_policy="skip")
    break_frame(dataset, 5)
    loader = DataLoader(dataset, batch_size=5, num_workers=2, multiprocessing_context=context, persistent_workers=True)
    for epoch in range(2):
        dataset.stats.reset()
        assert sum(len(b["image"]) for b in loader) == len(dataset)
        summary = dataset.stats.summary()
        assert summary["frames_served"] == len(dataset) == 24 and summary["replaced"] == 1
        if epoch == 0:
            # Only the stand-in for the broken frame can be a hit in a cold epoch.
            assert summary["cache_hits"] <= 1 and summary["requests"] >= 23 and summary["bytes_fetched"] > 0
        else:
            # The broken frame only, at its fetch retry budget.
            assert summary["cache_hit_rate"] > 0.9 and summary["requests"] == RetryPolicy().max_attempts, summary
    assert "24 frames in 24 items, 1 replaced" in dataset.stats.line()


def test_collate_helpers_batch_mixed_sizes(ahi: LocalAHI, index: FrameIndex, real_import: ImportedData) -> None:
    mixed = build_index(ahi.client(), real_import.datastore_id, progress=False)
    mono = mixed.filter((mixed.column("samples_per_pixel") == 1) & (mixed.column("bits_allocated") == 16))
    dataset = FrameDataset(mono, ahi.client())
    items = [dataset[i] for i in range(len(dataset))]
    shapes = {tuple(item["image"].shape) for item in items}
    assert len(shapes) > 1, "the real files mix sizes"
    with pytest.raises(RuntimeError, match="stack expects each tensor to be equal size"):
        next(iter(DataLoader(dataset, batch_size=len(dataset))))
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset), collate_fn=pad_collate)))
    height = max(s[1] for s in shapes)
    width = max(s[2] for s in shapes)
    assert batch["image"].shape == (len(dataset), 1, height, width) and batch["mask"].shape == batch["image"].shape
    for k, item in enumerate(items):
        h, w = item["image"].shape[1:]
        torch.testing.assert_close(batch["image"][k, :, :h, :w], item["image"])
        assert int(batch["mask"][k].sum()) == h * w and float(batch["image"][k, :, h:, :].abs().sum()) == 0
    as_list = next(iter(DataLoader(dataset, batch_size=len(dataset), collate_fn=list_collate)))
    assert [tuple(t.shape) for t in as_list["image"]] == [tuple(i["image"].shape) for i in items]
    assert as_list["meta"]["sop_instance_uid"] == [i["meta"]["sop_instance_uid"] for i in items]


def test_error_policy_retry(ahi: LocalAHI, break_frame: Callable[[FrameDataset, int], None], index: FrameIndex) -> None:
    dataset = FrameDataset(index, ahi.client(), error_policy=ErrorPolicy("retry", retries=2, backoff=0.01))
    break_frame(dataset, 2)
    with counting() as counted, pytest.raises(SampleError, match=f"after {RetryPolicy().max_attempts} attempts"):
        dataset[2]
    # The fetch layer spent its budget on the frame; the dataset's retry does not multiply it.
    assert counted.requests == RetryPolicy().max_attempts and counted.frames_failed == 1
    assert len(dataset.failures) == 1 and counted.retried == 0 and counted.failed == 1
    assert dataset.stats.summary()["failed"] == 1, "an item that raised still reaches dataset.stats"
    with pytest.raises(SampleError):
        dataset.__getitems__([1, 2])  # a batch, as DataLoader asks for one
    assert dataset.stats.summary()["failed"] == 2 and dataset.stats.summary()["items_served"] == 0
    assert dataset[1]["meta"]["index"] == 1


def test_error_policy_retry_covers_what_the_fetch_layer_does_not(ahi: LocalAHI, index: FrameIndex) -> None:
    calls: list[int] = []

    def flaky(item: dict) -> dict:  # type: ignore[type-arg]
        calls.append(int(item["meta"]["index"]))
        if len(calls) == 1:
            raise OSError("a transform's scratch file vanished")
        return item

    dataset = FrameDataset(
        index, ahi.client(), transform=flaky, error_policy=ErrorPolicy("retry", retries=2, backoff=0.001)
    )
    assert dataset[4]["meta"]["index"] == 4 and calls == [4, 4]
    assert dataset.stats.summary()["retried"] == 1 and len(dataset.failures) == 0


def test_datasets_pickle_without_connections(ahi: LocalAHI, index: FrameIndex, tmp_path: Path) -> None:
    dataset = FrameDataset(index, FrameFetcher(ahi.client(), cache=FrameCache(tmp_path)))
    dataset[0]
    blob = pickle.dumps(dataset)
    clone = pickle.loads(blob)
    assert clone.frame_index is None and not clone.fetcher.client.connected and clone.fetcher.cache._cache is None
    torch.testing.assert_close(clone[0]["image"], dataset[0]["image"])
    assert len(blob) < 200 * len(dataset) + 50_000, "workers receive flat arrays, not the Arrow table"


def test_empty_index_is_a_clear_error(ahi: LocalAHI, index: FrameIndex) -> None:
    with pytest.raises(ConfigError, match="index is empty"):
        FrameDataset(index.filter(np.zeros(len(index), dtype=bool)), ahi.client())
    with pytest.raises(ConfigError, match="error policy"):
        FrameDataset(index, ahi.client(), error_policy="ignore")


def test_one_fetcher_for_two_datasets_keeps_their_counts_apart(
    ahi: LocalAHI, index: FrameIndex, tmp_path: Path
) -> None:
    """A train and a val dataset in one process, one FrameFetcher and cache: each counts its own batches."""
    frames = FrameFetcher(ahi.client(), cache=FrameCache(tmp_path))
    train, val = (FrameDataset(part, frames) for part in (index.take(np.arange(0, 12)), index.take(np.arange(12, 24))))
    assert train.fetcher is not frames and train.fetcher.cache is val.fetcher.cache is frames.cache
    train.stats.reset()
    with counting() as counted:
        for item in range(6):
            train[item]
        for item in (0, 1, 2, 3, 0):
            val[item]
        train.__getitems__([0, 1])
    assert counted.requests == 10 and counted.cache_hits == 3, "the process counts everything once"
    train_counts, val_counts = train.stats.summary(), val.stats.summary()
    assert (train_counts["requests"], train_counts["cache_hits"], train_counts["items_served"]) == (6, 2, 8)
    assert (val_counts["requests"], val_counts["cache_hits"], val_counts["items_served"]) == (4, 1, 5)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def test_a_batch_is_built_as_its_items_one_by_one(ahi: LocalAHI, cohort: dict, index: FrameIndex) -> None:
    labels = {spec.series_uid: int(spec.nodule) for spec, _ in cohort["series"]}
    dataset = FrameDataset(index, ahi.client(), labels=labels, window="dicom")
    indices = [5, 0, 5, 17, 3, 23, 11]  # out of order, one twice, across every series
    batch = dataset.__getitems__(indices)
    singles = [dataset[position] for position in indices]
    assert [item["meta"]["index"] for item in batch] == indices
    for position, from_batch, single in zip(indices, batch, singles, strict=True):
        assert _same(from_batch, single), f"item {position} differs when built in a batch"
    assert batch[0] is not batch[2] and batch[0]["meta"] is not batch[2]["meta"], "a repeated item is its own item"
    assert {int(item["label"]) for item in batch} == {0, 1}


def test_a_frame_that_cannot_be_built_fails_only_its_item(ahi: LocalAHI, index: FrameIndex) -> None:
    dataset = FrameDataset(index, ahi.client(), error_policy="skip")
    submit = dataset.fetcher.submit_many

    def one_garbled(refs):  # type: ignore[no-untyped-def]
        futures = submit(refs)
        futures[1].result()  # the others arrive as fetched; this one is a 1-D array no image is made of
        garbled: Future[np.ndarray] = Future()
        garbled.set_result(np.zeros(7, dtype=np.int16))
        return [*futures[:1], garbled, *futures[2:]]

    dataset.fetcher.submit_many = one_garbled  # type: ignore[method-assign]
    batch = dataset.__getitems__([2, 3, 4])
    substitute = replacements(3, len(dataset), 1)[0]
    assert [item["meta"]["index"] for item in batch] == [2, substitute, 4]
    assert [(r.index, r.replaced_by) for r in dataset.failures.records] == [(3, substitute)]
    assert torch.equal(batch[0]["image"], dataset[2]["image"]) and torch.equal(batch[2]["image"], dataset[4]["image"])
