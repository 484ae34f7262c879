"""Building, filtering, saving and refreshing the frame index against the local service."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from ahi_torch.cache import FrameCache
from ahi_torch.client import AHIClient, dicom_updates
from ahi_torch.counters import counting
from ahi_torch.datasets import FrameDataset
from ahi_torch.errors import ConfigError
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, Search, build_index, refresh_index, search
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import SeriesSpec, write_series

PATIENTS = 13
SERIES_PER_PATIENT = 4  # 52 image sets: more than one page of SearchImageSets (50)


@pytest.fixture(scope="module")
def cohort(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("index-cohort")
    specs = []
    for patient in range(PATIENTS):
        for series in range(SERIES_PER_PATIENT):
            spec = SeriesSpec(
                patient_id=f"IDX-{patient:03d}",
                study_key=f"study-{patient}-{series // 2}",
                series_key=f"p{patient}-s{series}",
                series_number=series + 1,
                study_date=(dt.date(2023, 1, 1) + dt.timedelta(days=patient * 10 + series // 2)).strftime("%Y%m%d"),
                accession_number=f"ACC-{patient}-{series // 2}",
                slices=3,
                rows=12,
                columns=10,
                seed=patient * 10 + series,
            )
            write_series(root / spec.series_key, spec)
            specs.append(spec)
    result = ahi.import_dicom(root)
    assert len(result.image_set_ids) == PATIENTS * SERIES_PER_PATIENT
    by_series = {spec.series_uid: spec for spec in specs}
    return {"datastore_id": result.datastore_id, "specs": specs, "by_series": by_series, "result": result}


@pytest.fixture(scope="module")
def client(ahi: LocalAHI) -> AHIClient:
    return ahi.client()


@pytest.fixture(scope="module")
def index(client: AHIClient, cohort: dict) -> FrameIndex:
    return build_index(client, cohort["datastore_id"], progress=False, extra_tags=["SeriesDescription", "KVP"])


def _series_of(index: FrameIndex) -> set[str]:
    return {s.decode() for s in set(index.column("series_instance_uid").tolist())}


def test_index_covers_every_frame(index: FrameIndex, cohort: dict) -> None:
    assert index.image_set_count == 52
    assert len(index) == 52 * 3
    assert _series_of(index) == set(cohort["by_series"])
    assert index.table.column("KVP").to_pylist()[0] == "120"
    assert set(index.column("slice_index").tolist()) == {0, 1, 2}
    assert np.all(index.column("rows") == 12) and np.all(index.column("checksum") >= 0)
    frame_ids = index.column("frame_id")
    assert frame_ids.dtype.kind == "S" and len(set(frame_ids.tolist())) == len(index)
    volumes = index.volumes()
    assert len(volumes) == 52 and all(len(v.rows) == 3 for v in volumes)


def test_partitioned_and_combined_searches_agree(
    client: AHIClient, cohort: dict, index: FrameIndex, ahi: LocalAHI
) -> None:
    for partitions in (2, 4):
        searches = ahi.request_counts().get("SearchImageSets", 0)
        partitioned = build_index(client, cohort["datastore_id"], partitions=partitions, progress=False)
        assert partitioned.version == index.version
        # A probe for the earliest image set, then each time range paged to its end (unsplit, 52 sets are 2 pages).
        assert ahi.request_counts()["SearchImageSets"] - searches >= 1 + partitions
    two_filters = Search(search.patient_id("IDX-001"), search.is_primary())
    with pytest.raises(ConfigError, match="at most one filter of its own"):
        build_index(client, cohort["datastore_id"], searches=[two_filters], partitions=2, progress=False)
    two_patients = build_index(
        client,
        cohort["datastore_id"],
        searches=[Search(search.patient_id("IDX-001")), Search(search.patient_id("IDX-007"))],
        progress=False,
    )
    expected = {uid for uid, spec in cohort["by_series"].items() if spec.patient_id in ("IDX-001", "IDX-007")}
    assert _series_of(two_patients) == expected


def test_filters_return_exactly_the_expected_sets(client: AHIClient, cohort: dict) -> None:
    specs = cohort["specs"]
    datastore_id = cohort["datastore_id"]

    def series_for(*filters: dict) -> set[str]:
        return _series_of(build_index(client, datastore_id, filters=filters, progress=False))

    assert series_for(search.patient_id("IDX-004")) == {s.series_uid for s in specs if s.patient_id == "IDX-004"}
    target = specs[9]
    assert series_for(search.study_uid(target.study_uid)) == {
        s.series_uid for s in specs if s.study_uid == target.study_uid
    }
    assert series_for(search.series_uid(target.series_uid)) == {target.series_uid}
    assert series_for(search.accession_number(target.accession_number)) == {
        s.series_uid for s in specs if s.accession_number == target.accession_number
    }
    in_range = series_for(search.study_date_between("20230111", "20230121"))
    assert in_range == {s.series_uid for s in specs if "20230111" <= s.study_date <= "20230121"}
    assert in_range
    now = dt.datetime.now(dt.timezone.utc)
    assert len(series_for(search.created_between(now - dt.timedelta(hours=1), now + dt.timedelta(hours=1)))) == 52
    assert series_for(search.updated_between(dt.datetime(2001, 1, 1), dt.datetime(2002, 1, 1))) == set()
    with pytest.raises(ConfigError, match="at most two filters"):
        Search(search.patient_id("a"), search.patient_id("b"), search.patient_id("c"))


def test_save_load_round_trip(index: FrameIndex, tmp_path: Path) -> None:
    path = index.save(tmp_path / "index.parquet")
    loaded = FrameIndex.load(path)
    assert loaded.version == index.version
    assert loaded.table.equals(index.table)
    assert loaded.info["datastore_id"] == index.info["datastore_id"]
    assert loaded.extra_tags == ["SeriesDescription", "KVP"]
    with pytest.raises(ConfigError, match="no index file"):
        FrameIndex.load(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ConfigError, match="damaged or not a Parquet index"):
        FrameIndex.load(tmp_path / "junk.parquet")


def test_filter_and_summary(index: FrameIndex) -> None:
    first_patient = index.filter(pc.field("patient_id") == "IDX-000")
    assert first_patient.image_set_count == 4
    summary = index.summary()
    assert summary["image_sets"] == 52 and summary["patients"] == PATIENTS and summary["modalities"] == {"CT": 156}


def test_incremental_refresh_fetches_only_the_changed_set(client: AHIClient, cohort: dict, ahi: LocalAHI) -> None:
    datastore_id = cohort["datastore_id"]
    index = build_index(client, datastore_id, progress=False)
    fetches: list[str] = []
    fresh_client = ahi.client()
    fresh_client.boto3.meta.events.register(
        "before-call.medical-imaging.GetImageSetMetadata", lambda params, **_: fetches.append(params["url_path"])
    )
    began = time.perf_counter()
    unchanged, stats = refresh_index(fresh_client, index, progress=False)
    assert 0 < stats.seconds <= time.perf_counter() - began, "the refresh's own duration, as reported"
    assert (stats.added, stats.changed, stats.removed, stats.unchanged) == (0, 0, 0, 52)
    assert fetches == [] and unchanged.version == index.version

    target = cohort["specs"][5]
    image_set_id = next(
        s["importResponse"]["imageSetId"]
        for s in cohort["result"].successes
        if f"/{target.series_key}/" in s["inputFile"]
    )
    client.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=image_set_id,
        latestVersionId="1",
        updateImageSetMetadataUpdates=dicom_updates(updatable={"Study": {"DICOM": {"StudyDescription": "Reviewed"}}}),
    )
    client.wait_for_image_set(datastore_id, image_set_id, timeout=10)
    time.sleep(0.01)
    refreshed, stats = refresh_index(fresh_client, index, progress=False)
    assert (stats.added, stats.changed, stats.removed, stats.unchanged) == (0, 1, 0, 51) and stats.fetched == 1
    assert len(fetches) == 1 and image_set_id in fetches[0]
    assert refreshed.version != index.version
    changed = refreshed.filter(pc.field("image_set_id") == image_set_id)
    assert set(changed.column("image_set_version").tolist()) == {2}
    assert set(changed.table.column("study_description").to_pylist()) == {"Reviewed"}
    assert len(refreshed) == len(index)


def test_refresh_adds_new_and_drops_deleted_image_sets_and_refetches_new_versions(
    client: AHIClient, cohort: dict, ahi: LocalAHI, tmp_path: Path
) -> None:
    datastore_id = cohort["datastore_id"]
    index = build_index(client, datastore_id, progress=False)
    deleted = index.texts("image_set_id")[0]
    changed = next(i for i in index.texts("image_set_id") if i != deleted)
    version = index.image_sets()[changed][0]
    old_rows = index.filter(pc.field("image_set_id") == changed)
    cache = FrameCache(tmp_path / "cache")
    before = FrameDataset(old_rows, FrameFetcher(client, cache=cache), rescale=False, dtype=None)
    old_pixels = [before[i]["image"] for i in range(len(before))]

    client.delete_image_set(datastoreId=datastore_id, imageSetId=deleted)
    client.update_image_set_metadata(
        datastoreId=datastore_id,
        imageSetId=changed,
        latestVersionId=str(version),
        updateImageSetMetadataUpdates=dicom_updates(updatable={"Patient": {"DICOM": {"PatientName": "NEW^NAME"}}}),
    )
    client.wait_for_image_set(datastore_id, changed, timeout=10)
    spec = SeriesSpec(patient_id="ADDED", study_key="added", series_key="added", slices=3, rows=8, columns=8)
    write_series(tmp_path / "added", spec)
    added = ahi.import_dicom(tmp_path / "added", datastore_id)
    time.sleep(0.01)

    refreshed, stats = refresh_index(ahi.client(), index, progress=False)
    assert (stats.added, stats.changed, stats.removed) == (1, 1, 1)
    ids = set(refreshed.texts("image_set_id"))
    assert deleted not in ids and set(added.image_set_ids) <= ids and changed in ids
    assert len(refreshed) == len(index) - len(index.filter(pc.field("image_set_id") == deleted)) + 3

    # Pixels of the new version are fetched and cached under the new version, never served from the old entries.
    new_rows = refreshed.filter(pc.field("image_set_id") == changed)
    assert set(new_rows.column("image_set_version").tolist()) == {version + 1}
    after = FrameDataset(new_rows, FrameFetcher(client, cache=cache), rescale=False, dtype=None)
    with counting() as counted:
        new_pixels = [after[i]["image"] for i in range(len(after))]
    assert counted.requests == len(new_rows), "a new version is fetched, not read from cache"
    cached = cache.keys()
    assert sum(f"/v{version + 1}/" in key for key in cached) == len(new_rows)
    for old, new in zip(old_pixels, new_pixels, strict=True):
        torch.testing.assert_close(old, new)  # a metadata update keeps the pixels
