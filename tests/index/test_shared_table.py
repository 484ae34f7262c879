"""SharedTable and the coded index: every value a worker reads equals the index's, in tens of bytes per frame."""

from __future__ import annotations

import gc
import json
import os
import pickle
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from ahi_torch.client import AHIClient, ClientConfig
from ahi_torch.datasets import FrameDataset
from ahi_torch.datasets._table import NUMBER_COLUMNS, TEXT_COLUMNS, FrameTable
from ahi_torch.errors import ConfigError
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.index import frame_index as frame_index_module
from ahi_torch.index.build import SORT_KEYS
from ahi_torch.index.columns import CODED_TEXT, COLUMNS, RowBuffer, sort_rows
from ahi_torch.index.shared_table import STALE_AFTER_S, SharedTable
from ahi_torch.local import LocalAHI
from ahi_torch.metadata import ImageSetMetadata
from ahi_torch.sample.metadata_documents import DATASTORE, metadata_document

from ..conftest import ImportedData


@pytest.fixture(scope="module")
def mixed_index(ahi: LocalAHI, synthetic_import: ImportedData) -> FrameIndex:
    """CT, multi-frame MR and RGB series: several series, syntaxes and photometrics."""
    return build_index(ahi.client(), synthetic_import.datastore_id, progress=False)


def _decoded(table: pa.Table) -> pa.Table:
    """Coded text as plain text: tables equal in content compare equal whatever their dictionaries."""
    return pa.table(
        {
            name: column.cast(pa.string()) if pa.types.is_dictionary(column.type) else column
            for name, column in zip(table.column_names, table.columns, strict=True)
        }
    )


def _assert_same(table: FrameTable, index: FrameIndex) -> None:
    for name in NUMBER_COLUMNS:
        expected = index.column(name)
        got = np.asarray(getattr(table, name))
        assert got.shape == expected.shape, name
        np.testing.assert_array_equal(got.astype(expected.dtype), expected, err_msg=name)
        rows = np.arange(len(index))[::-1]
        np.testing.assert_array_equal(np.asarray(getattr(table, name)[rows]).astype(expected.dtype), expected[rows])
    for name in TEXT_COLUMNS:
        expected_text = [value.decode() for value in index.column(name)]
        assert [table.text(name, row) for row in range(len(index))] == expected_text, name
        shuffled = np.random.default_rng(len(name)).permutation(len(index))
        assert table.strings(name, shuffled) == [expected_text[row] for row in shuffled], name
        assert table.strings(name, np.zeros(0, dtype=np.int64)) == []
    _assert_same_refs(table, index)
    assert table.refs(shuffled) == [table.ref(int(row)) for row in shuffled], "a batch's refs are its rows' refs"
    assert table.metas(shuffled) == [table.meta(int(row)) for row in shuffled]


def _assert_same_refs(table: FrameTable, index: FrameIndex) -> None:
    """What a worker fetches and checks each frame by: the index's values, DICOM's defaults where it has none (-1)."""
    number = {name: index.column(name) for name in NUMBER_COLUMNS}
    text = {name: [value.decode() for value in index.column(name)] for name in TEXT_COLUMNS}
    for row in range(len(index)):
        ref = table.ref(row)
        checksum = int(number["checksum"][row])
        assert ref.checksum == (None if checksum == -1 else checksum), row
        assert ref.reduced_checksums == tuple(int(c) for c in number["reduced_checksums"][row])
        assert (ref.datastore_id, ref.image_set_id, ref.frame_id, ref.stored_transfer_syntax) == (
            text["datastore_id"][row],
            text["image_set_id"][row],
            text["frame_id"][row],
            text["stored_transfer_syntax"][row],
        )
        assert ref.version == int(number["image_set_version"][row])
        pixel = ref.pixel
        assert (pixel.rows, pixel.columns) == (int(number["rows"][row]), int(number["columns"][row]))
        given = {name: int(number[name][row]) for name in ("samples_per_pixel", "bits_allocated", "bits_stored")}
        assert pixel.samples_per_pixel == (given["samples_per_pixel"] if given["samples_per_pixel"] > 0 else 1)
        assert pixel.bits_allocated == (given["bits_allocated"] if given["bits_allocated"] > 0 else 16)
        assert pixel.bits_stored == (given["bits_stored"] if given["bits_stored"] > 0 else 16)
        assert pixel.pixel_representation == max(0, int(number["pixel_representation"][row]))
        assert pixel.planar_configuration == max(0, int(number["planar_configuration"][row]))
        assert pixel.photometric_interpretation == (text["photometric_interpretation"][row] or "MONOCHROME2")


def test_every_value_reads_back_as_the_index_has_it(mixed_index: FrameIndex, tmp_path: Path) -> None:
    table = FrameTable(mixed_index, tmp_path)
    assert len(table) == len(mixed_index) and len(mixed_index.volumes()) >= 3
    _assert_same(table, mixed_index)
    encodings = table.shared.encodings
    assert encodings["frame_id"] == "hex" and encodings["sop_instance_uid"] == "uid"
    assert encodings["checksum"] == encodings["reduced_checksums"] == "crc"
    # What the layout is for: series constants stored once per series, not per frame.
    per_series = {name for name, (_, _, by_series) in table.shared._parts.items() if by_series}
    assert {"image_set_id", "series_affine", "rows", "stored_transfer_syntax"} <= per_series
    assert "frame_id" not in per_series and "image_position" not in per_series


def test_an_archive_costs_under_100_bytes_per_frame(tmp_path: Path) -> None:
    """Generated CT metadata (AHI's layout, 20 image sets of 150 slices): the issue's budget."""
    rows = RowBuffer()
    for number in range(20):
        rows.append({"version": 1}, ImageSetMetadata.parse(metadata_document(number, DATASTORE, 150)), DATASTORE)
    index = FrameIndex(sort_rows(rows.table(), SORT_KEYS), {})
    table = FrameTable(index, tmp_path)
    assert table.shared.encodings["sop_instance_uid"] == "uid"
    assert table.nbytes / len(index) <= 100, table.nbytes / len(index)
    assert index.table.nbytes / len(index) < 600, "the coded index itself"
    _assert_same(table, index)


def test_a_value_that_changes_within_a_series_is_kept_per_frame(mixed_index: FrameIndex, tmp_path: Path) -> None:
    slopes = mixed_index.column("rescale_slope").copy()
    slopes[1] = 2.5  # as PET series do, slice by slice
    names = np.asarray(mixed_index.table.column_names)
    changed = FrameIndex(
        mixed_index.table.set_column(
            int(np.flatnonzero(names == "rescale_slope")[0]), "rescale_slope", pa.array(slopes)
        ),
        mixed_index.info,
    )
    table = FrameTable(changed, tmp_path)
    assert not table.shared._parts["rescale_slope"][2]
    np.testing.assert_array_equal(np.asarray(table.rescale_slope), slopes)
    assert table.shared.directory != FrameTable(mixed_index, tmp_path).shared.directory, "content names the files"


def test_fallback_encodings_and_checksum_edges(tmp_path: Path) -> None:
    rows = RowBuffer()
    document = metadata_document(0, DATASTORE, 4)
    series = next(iter(document["Study"]["Series"].values()))
    instances = series["Instances"]
    renamed = {}
    for number, (uid, instance) in enumerate(instances.items()):
        stem = uid.rsplit(".", 1)[0]
        # A UID whose last component is not all digits stays text, exactly.
        renamed[f"{stem}.x{number + 1}" if number == 0 else uid] = instance
        instance["ImageFrames"][0]["ID"] = f"Frame-{number}" if number == 1 else instance["ImageFrames"][0]["ID"]
    series["Instances"] = renamed
    first = next(iter(renamed.values()))["ImageFrames"][0]
    first["PixelDataChecksumFromBaseToFullResolution"][0]["Checksum"] = 0xFFFFFFFF
    second = list(renamed.values())[1]["ImageFrames"][0]
    second["PixelDataChecksumFromBaseToFullResolution"][0]["Checksum"] = 0  # a CRC like any other
    last = list(renamed.values())[-1]["ImageFrames"][0]
    del last["PixelDataChecksumFromBaseToFullResolution"]
    del list(renamed.values())[2]["DICOM"]["Rows"]  # no pixel description: the index holds nulls
    rows.append({"version": 1}, ImageSetMetadata.parse(document), DATASTORE)
    index = FrameIndex(rows.table(), {})
    table = FrameTable(index, tmp_path)
    assert table.shared.encodings["frame_id"] == "text"
    assert table.shared.encodings["sop_instance_uid"] == "text"
    _assert_same(table, index)
    assert 0xFFFFFFFF in np.asarray(table.checksum), "a CRC of all ones is a CRC, not 'none'"
    assert (np.asarray(table.checksum) == -1).sum() == 1 and (np.asarray(table.reduced_checksums)[-1] == -1).all()
    assert table.ref(len(index) - 1).checksum is None
    assert {0, 0xFFFFFFFF} <= {table.ref(row).checksum for row in range(4)}
    bare = table.ref(int(np.flatnonzero(np.asarray(table.rows) <= 0)[0])).pixel
    assert (bare.bits_allocated, bare.bits_stored, bare.samples_per_pixel) == (16, 16, 1)
    assert bare.photometric_interpretation == "MONOCHROME2"


class _Reader(Dataset[Any]):
    def __init__(self, dataset: FrameDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int) -> dict[str, Any]:
        table = self.dataset.frame_table
        maps = Path("/proc/self/maps").read_text()
        return {
            "ref": repr(table.ref(row)),
            "meta": table.meta(row),
            "mapped": str(table.shared.directory / "frames.arrow") in maps,
            "pid": os.getpid(),
        }


@pytest.mark.parametrize("start_method", ["spawn", "fork"])
def test_workers_map_the_files_instead_of_copying(mixed_index: FrameIndex, tmp_path: Path, start_method: str) -> None:
    client = AHIClient(ClientConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1"))
    dataset = FrameDataset(mixed_index, client, table_dir=tmp_path)
    state = pickle.dumps(dataset.frame_table)
    assert len(state) < 1024, "a worker receives the files' path, not the columns"
    loader = DataLoader(
        _Reader(dataset), batch_size=None, num_workers=2, multiprocessing_context=start_method, persistent_workers=False
    )
    items = list(loader)
    assert {item["pid"] for item in items} - {os.getpid()}
    assert all(item["mapped"] for item in items)
    assert [item["ref"] for item in items] == [repr(dataset.frame_table.ref(row)) for row in range(len(dataset))]
    assert [item["meta"] for item in items] == [dataset.frame_table.meta(row) for row in range(len(dataset))]


def test_a_damaged_table_is_written_again_and_stale_ones_are_pruned(mixed_index: FrameIndex, tmp_path: Path) -> None:
    first = FrameTable(mixed_index, tmp_path).shared.directory
    frames = first / "frames.arrow"
    data = bytearray(frames.read_bytes())
    data[len(data) // 2] ^= 0x40
    frames.chmod(0o600)
    frames.write_bytes(bytes(data))
    with pytest.warns(RuntimeWarning, match="damaged"):
        again = FrameTable(mixed_index, tmp_path)
    _assert_same(again, mixed_index)

    stale = tmp_path / ("t-" + "0" * 64)
    stale.mkdir()
    (stale / "layout").write_text("1")
    old = time.time() - STALE_AFTER_S - 60
    os.utime(stale / "layout", (old, old))
    foreign = tmp_path / "t-notes"  # not ours: no layout file
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    (tmp_path / "mine.txt").write_text("user data")
    slopes = mixed_index.column("rescale_slope") * 2  # new content: a new table, and a prune
    names = list(mixed_index.table.column_names)
    FrameTable(
        FrameIndex(
            mixed_index.table.set_column(names.index("rescale_slope"), "rescale_slope", pa.array(slopes)),
            mixed_index.info,
        ),
        tmp_path,
    )
    assert not stale.exists()
    assert (foreign / "keep.txt").exists() and (tmp_path / "mine.txt").exists() and first.exists()
    # A table some process still holds is never pruned, however old.
    held = FrameTable(mixed_index, tmp_path)
    old_layout = held.shared.directory / "layout"
    os.utime(old_layout, (old, old))
    FrameTable(
        FrameIndex(
            mixed_index.table.set_column(names.index("rescale_slope"), "rescale_slope", pa.array(slopes * 3)),
            mixed_index.info,
        ),
        tmp_path,
    )
    assert old_layout.exists(), "in use: kept"
    # A table nobody holds is kept for three days after it was last opened.
    recent = FrameTable(mixed_index.filter(np.arange(len(mixed_index)) % 2 == 0), tmp_path).shared.directory
    gc.collect()  # the table above is released: only its age protects it now
    two_days = time.time() - 2 * 24 * 3600
    os.utime(recent / "layout", (two_days, two_days))
    FrameTable(mixed_index.filter(np.arange(len(mixed_index)) % 3 == 0), tmp_path)
    assert (recent / "layout").exists(), "unheld but opened two days ago: kept"
    _assert_same(pickle.loads(pickle.dumps(held)), mixed_index)


def test_repeated_text_is_coded_and_format_3_indexes_load(mixed_index: FrameIndex, tmp_path: Path) -> None:
    for name, kind in COLUMNS.items():
        assert mixed_index.table.schema.field(name).type == kind
    assert COLUMNS["patient_id"] == CODED_TEXT and COLUMNS["frame_id"] == pa.string()
    # An index saved by the previous format: plain text, format_version "3".
    plain = mixed_index.table.cast(
        pa.schema(
            [
                pa.field(f.name, pa.string() if pa.types.is_dictionary(f.type) else f.type)
                for f in mixed_index.table.schema
            ]
        )
    )
    info = json.dumps({**mixed_index.info, "format_version": "3", "index_version": mixed_index.version}).encode()
    metadata = {b"ahi_torch": info, b"ahi_torch.sha256": frame_index_module._digest(info, plain)}
    path = tmp_path / "v3.parquet"
    pq.write_table(plain.replace_schema_metadata(metadata), path)
    loaded = FrameIndex.load(path)
    assert loaded.table.schema.field("series_instance_uid").type == CODED_TEXT
    assert loaded.version == mixed_index.version, "the upgrade changes storage, not content"
    assert _decoded(loaded.table).equals(_decoded(mixed_index.table))
    saved = FrameIndex.load(loaded.save(tmp_path / "v4.parquet"))
    assert _decoded(saved.table).equals(_decoded(mixed_index.table)) and saved.info["format_version"] == "5"
    ct = saved.filter(pc.field("modality") == "CT")
    assert 0 < len(ct) < len(saved)


def test_sorting_and_volumes_follow_the_text_not_the_codes(mixed_index: FrameIndex) -> None:
    shuffled = mixed_index.take(np.random.default_rng(3).permutation(len(mixed_index)))
    ordered = sort_rows(shuffled.table, SORT_KEYS)
    decoded = _decoded(shuffled.table)
    assert ordered.column("frame_id").to_pylist() == decoded.sort_by(SORT_KEYS).column("frame_id").to_pylist()
    # volumes(): rows of each (image set, series) in slice order, volumes in order of first row
    image_sets, series, slices = (shuffled.column(n) for n in ("image_set_id", "series_instance_uid", "slice_index"))
    expected: dict[tuple[bytes, bytes], list[int]] = {}
    for row, key in enumerate(zip(image_sets.tolist(), series.tolist(), strict=True)):
        expected.setdefault(key, []).append(row)
    volumes = shuffled.volumes()
    assert [(v.image_set_id.encode(), v.series_instance_uid.encode()) for v in volumes] == list(expected)
    for volume, rows in zip(volumes, expected.values(), strict=True):
        assert volume.rows.tolist() == sorted(rows, key=lambda r: slices[r])
    assert torch.equal(
        torch.as_tensor(np.concatenate([v.rows for v in volumes])).sort().values, torch.arange(len(shuffled))
    )


def test_volume_rows_are_runs_in_a_built_index_and_exact_otherwise(mixed_index: FrameIndex) -> None:
    from ahi_torch.datasets.volumes import VolumeRows

    for index, runs in ((mixed_index, True), (mixed_index.take(np.arange(len(mixed_index))[::-1]), False)):
        expected = [volume.rows for volume in index.volumes()]
        rows = VolumeRows(expected)
        assert (rows.rows is None) == runs
        assert len(rows) == len(expected)
        assert [r.tolist() for r in rows] == [e.tolist() for e in expected]
        assert [r.tolist() for r in rows[1:]] == [e.tolist() for e in expected[1:]]


def test_tables_go_to_the_configured_folder_else_a_private_one_in_tmp(
    mixed_index: FrameIndex, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AHI_TORCH_TABLE_DIR", str(tmp_path / "configured"))
    assert FrameTable(mixed_index).shared.directory.parent == tmp_path / "configured"
    monkeypatch.delenv("AHI_TORCH_TABLE_DIR")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    (tmp_path / "tmp").mkdir()
    table = FrameTable(mixed_index)
    assert table.shared.directory.parent == tmp_path / "tmp" / f"ahi_torch-{os.getuid()}" / "tables"
    for folder in (table.shared.directory, table.shared.directory.parent):
        assert folder.stat().st_mode & 0o077 == 0, "patient IDs: readable by the owner only"
    _assert_same(table, mixed_index)


def test_integers_are_stored_narrow_and_an_empty_table_reads_as_empty(mixed_index: FrameIndex, tmp_path: Path) -> None:
    table = FrameTable(mixed_index, tmp_path)
    for file_name, stored in table.shared._tables.items():
        for field in stored.schema:
            kind = field.type.index_type if pa.types.is_dictionary(field.type) else field.type
            if not pa.types.is_signed_integer(kind) or kind.bit_width == 8:
                continue
            values = np.asarray(table.shared._parts.get(field.name, (stored.column(field.name).to_numpy(),))[0])
            narrower = np.iinfo(f"int{kind.bit_width // 2}")
            assert values.min() < narrower.min or values.max() > narrower.max, f"{file_name}:{field.name} is {kind}"
    empty = FrameTable(mixed_index.filter(np.zeros(len(mixed_index), dtype=bool)), tmp_path)
    assert len(empty) == 0 and empty.texts("image_set_id", np.zeros(0, dtype=np.int64)).size == 0
    for name in NUMBER_COLUMNS:
        assert len(np.asarray(getattr(empty, name))) == 0, name


def test_the_table_name_covers_every_byte_of_its_text(tmp_path: Path) -> None:
    """A table is reused by its name (a SHA-256 of its content): text differing in its last byte is another table."""

    def created(first: str, last: str) -> Path:
        texts = pa.array([first, "b", last]).dictionary_encode()
        table = pa.table({"image_set_id": texts, "series_instance_uid": texts, "patient_id": texts})
        return SharedTable.create(table, ["patient_id"], tmp_path).directory

    assert len({created("a", "cx"), created("a", "cy"), created("z", "cx")}) == 3
    assert created("a", "cx") == created("a", "cx")


def test_uids_of_every_length_and_bad_lookups(mixed_index: FrameIndex, tmp_path: Path) -> None:
    """UIDs packed two digits to a byte read back exactly whatever their last component's length."""
    uids = ["1.2.840.5.4", "1.2.840.5.45", "1.2.840.5.456", "1.2.840.5.0", "1.2.840.5.1234567", "1.2.840.5.007"]
    sets = pa.array(["s"] * len(uids)).dictionary_encode()
    table = pa.table({"image_set_id": sets, "series_instance_uid": sets, "sop_instance_uid": pa.array(uids)})
    shared = SharedTable.create(table, ["sop_instance_uid"], tmp_path)
    assert shared.encodings["sop_instance_uid"] == "uid"
    assert [shared.text("sop_instance_uid", row) for row in range(len(uids))] == uids
    with pytest.raises(ConfigError, match="no column 'patient_id'"):
        SharedTable.create(table, ["patient_id", "study_date"], tmp_path)
    flags = SharedTable.create(table.append_column("regular", pa.array([True, None, False] * 2)), ["regular"], tmp_path)
    assert np.asarray(flags.numbers("regular")).tolist() == [1, 0, 0] * 2, "a missing flag is not a set one"
    with pytest.raises(ConfigError, match="no text column 'regular'"):
        flags.text("regular", 0)
    frames = FrameTable(mixed_index, tmp_path)
    for name in ("checksum", "rows"):  # a CRC or a number is not text, whatever its encoding
        with pytest.raises(ConfigError, match=f"no text column '{name}'"):
            frames.shared.text(name, 0)
    assert not hasattr(frames, "abc") and not hasattr(frames, "zzz"), "only number columns are attributes"
    assert frames.label is None, "a dataset without labels has no label column"
    with pytest.raises(ConfigError, match="no number column 'label'"):
        frames.shared.numbers("label")
