"""A saved index is reused only for what it was built from, and a damaged one never loads."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ahi_torch.cli.main import main
from ahi_torch.config import build_index_from_config, from_dict
from ahi_torch.config.schema import Config
from ahi_torch.errors import ConfigError
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI

from ..conftest import ImportedData


def _config(ahi: LocalAHI, imported: ImportedData, path: Path, **search) -> Config:  # type: ignore[no-untyped-def]
    return from_dict(
        Config,
        {
            "connection": {"endpoint_url": ahi.endpoint_url},
            "datastore": {"id": imported.datastore_id},
            "index": {"path": str(path)},
            "search": search,
        },
    )


def test_changed_search_or_tags_rebuild_the_index(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "index.parquet"
    mr = _config(ahi, synthetic_import, path, filters=[{"patient_id": "SYN-MR"}])
    first = build_index_from_config(mr, progress=False)
    assert set(first.texts("patient_id")) == {"SYN-MR"}
    ct = _config(ahi, synthetic_import, path, filters=[{"patient_id": "SYN-0001"}])
    with caplog.at_level(logging.WARNING):
        second = build_index_from_config(ct, progress=False)
    assert set(second.texts("patient_id")) == {"SYN-0001"}, "never the old selection"
    assert "building it again" in caplog.text and "another searches" in caplog.text
    tagged = _config(ahi, synthetic_import, path, filters=[{"patient_id": "SYN-0001"}], extra_tags=["KVP"])
    third = build_index_from_config(tagged, progress=False)
    assert "KVP" in third.table.column_names and set(third.texts("KVP")) == {"120"}
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert build_index_from_config(tagged, progress=False).version == third.version
    assert "building it again" not in caplog.text, "an unchanged config reuses the index"


def test_index_build_rebuild_flag(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"connection: {{endpoint_url: '{ahi.endpoint_url}', access_key_id: local, secret_access_key: local}}\n"
        f"datastore: {{id: {synthetic_import.datastore_id}}}\nindex: {{path: '{tmp_path / 'i.parquet'}'}}\n"
    )
    assert main(["index", "build", str(config)]) == 0
    built = (tmp_path / "i.parquet").stat().st_mtime_ns
    assert main(["index", "build", str(config), "-o", "index.refresh=false"]) == 0
    assert (tmp_path / "i.parquet").stat().st_mtime_ns == built, "reused as it is"
    assert main(["index", "build", str(config), "--rebuild"]) == 0
    assert (tmp_path / "i.parquet").stat().st_mtime_ns != built
    capsys.readouterr()


def test_flipped_bits_never_load_as_other_ids(ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path) -> None:
    index = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    path = index.save(tmp_path / "index.parquet")
    data = path.read_bytes()
    rng = random.Random(7)
    damaged = tmp_path / "damaged.parquet"
    silent = loaded = 0
    for _ in range(150):
        flipped = bytearray(data)
        position = rng.randrange(4, len(flipped) - 8)
        flipped[position] ^= 1 << rng.randrange(8)
        damaged.write_bytes(bytes(flipped))
        try:
            again = FrameIndex.load(damaged)
        except ConfigError as error:
            assert "damaged" in str(error) or "format" in str(error)
            continue
        loaded += 1
        same = again.table.equals(index.table) and again.info["datastore_id"] == index.info["datastore_id"]
        silent += not same
    assert silent == 0, f"{silent} flipped files loaded with other content"
    assert loaded < 100, "most flips are caught; the rest land where they change nothing (statistics, padding)"

    # Provenance that changed without its checksum (a flip pyarrow would decode) is refused.
    table = pq.read_table(path)
    metadata = dict(table.schema.metadata)
    metadata[b"ahi_torch"] = metadata[b"ahi_torch"].replace(index.info["datastore_id"].encode(), b"0" * 32)
    pq.write_table(table.replace_schema_metadata(metadata), damaged)
    with pytest.raises(ConfigError, match="content does not match its checksum"):
        FrameIndex.load(damaged)

    # A flip in the stored Arrow schema can retype a column (text codes read as bytes) while every
    # value still matches the checksum: that file is damaged too, never "not a frame index".
    position = table.column_names.index("modality")
    retyped = table.set_column(
        position, "modality", table.column("modality").cast(pa.dictionary(pa.int32(), pa.binary()))
    )
    pq.write_table(retyped, damaged)
    with pytest.raises(ConfigError, match=f"{damaged} is damaged: .*modality"):
        FrameIndex.load(damaged)


def test_no_progress_bar_off_a_terminal(
    ahi: LocalAHI, synthetic_import: ImportedData, capsys: pytest.CaptureFixture[str]
) -> None:
    build_index(ahi.client(), synthetic_import.datastore_id, progress=True)
    assert capsys.readouterr().err == "", "a piped stderr gets no bar"


def test_a_search_that_matches_nothing_never_replaces_a_saved_index(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 22.7: a failing `index build` or `cache warm` wrote an empty index over a good one."""
    path = tmp_path / "index.parquet"
    good = build_index_from_config(_config(ahi, synthetic_import, path), progress=False)
    saved = path.read_bytes()
    nothing = _config(ahi, synthetic_import, path, filters=[{"patient_id": "NOBODY"}])
    with pytest.raises(ConfigError, match=r"matched no frames .*; the index at .* was left as it was"):
        build_index_from_config(nothing, progress=False)
    assert path.read_bytes() == saved and FrameIndex.load(path).version == good.version
    config = tmp_path / "nothing.yaml"
    config.write_text(
        f"connection: {{endpoint_url: '{ahi.endpoint_url}', access_key_id: local, secret_access_key: local}}\n"
        f"datastore: {{id: {synthetic_import.datastore_id}}}\nindex: {{path: '{path}'}}\n"
        "search: {filters: [{patient_id: NOBODY}]}\n"
    )
    for command in (["index", "build", str(config)], ["cache", "warm", str(config), "-o", f"cache.dir={tmp_path}/c"]):
        assert main(command) == 2, "a configuration problem: exit 2 with one line"
        assert "matched no frames" in capsys.readouterr().err
        assert path.read_bytes() == saved, f"{command[:2]} left the saved index alone"
    with pytest.raises(ConfigError, match="an empty index never replaces"):
        good.filter(pa.array([False] * len(good))).save(path)
    assert path.read_bytes() == saved


def test_every_column_is_covered_by_the_checksum(ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path) -> None:
    """A value changed in any one column, the stored checksum kept, is refused (a mutant skipped image_position)."""
    index = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    path = index.save(tmp_path / "index.parquet")
    table = pq.read_table(path)
    damaged = tmp_path / "damaged.parquet"
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        values = column.to_pylist()
        changed = next((i for i, value in enumerate(values) if value is not None), None)
        if changed is None:
            continue
        value = values[changed]
        if isinstance(value, list):
            other = [*value[:-1], (value[-1] or 0) + 1] if value and not isinstance(value[-1], (str, dict)) else None
        elif isinstance(value, bool):
            other = not value
        elif isinstance(value, (int, float)):
            other = value + 1
        elif isinstance(value, str):
            other = value + "x"
        else:
            continue
        if other is None:
            continue
        values[changed] = other
        plain = pa.array(values, type=column.type.value_type if pa.types.is_dictionary(column.type) else column.type)
        replaced = plain.dictionary_encode() if pa.types.is_dictionary(column.type) else plain
        if pa.types.is_dictionary(column.type):
            replaced = replaced.cast(column.type)
        pq.write_table(table.set_column(table.column_names.index(name), name, replaced), damaged)
        with pytest.raises(ConfigError, match=r"damaged|checksum"):
            FrameIndex.load(damaged)
