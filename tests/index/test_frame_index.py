"""FrameIndex as a table, without the service: columns, volumes, content digests, MONAI data, saved files."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ahi_torch.errors import ConfigError
from ahi_torch.index import FrameIndex
from ahi_torch.index.build import SORT_KEYS
from ahi_torch.index.columns import RowBuffer, sort_rows
from ahi_torch.metadata import ImageSetMetadata
from ahi_torch.sample.metadata_documents import DATASTORE, metadata_document


def _two_series(number: int, slices: int) -> dict[str, Any]:
    """An image set of two series (a CT and its copy under new UIDs and frame IDs)."""
    document = metadata_document(number, DATASTORE, slices)
    series_map = document["Study"]["Series"]
    uid, series = next(iter(series_map.items()))
    other = copy.deepcopy(series)
    other_uid = f"{uid}.2"
    other["DICOM"]["SeriesInstanceUID"] = other_uid
    other["Instances"] = {
        f"{sop}.2": {**instance, "ImageFrames": [{**instance["ImageFrames"][0], "ID": f"{k:032x}"}]}
        for k, (sop, instance) in enumerate(series["Instances"].items())
    }
    series_map[other_uid] = other
    return document


@pytest.fixture(scope="module")
def index() -> FrameIndex:
    rows = RowBuffer()
    for number in range(3):
        rows.append({"version": 1}, ImageSetMetadata.parse(_two_series(number, 4)), DATASTORE)
    return FrameIndex(sort_rows(rows.table(), SORT_KEYS), {"datastore_id": DATASTORE})


def _replaced(index: FrameIndex, name: str, values: Any) -> FrameIndex:
    position = index.table.column_names.index(name)
    return FrameIndex(index.table.set_column(position, name, pa.array(values, index.table.schema.field(name).type)))


def test_every_series_of_an_image_set_is_its_own_volume(index: FrameIndex) -> None:
    volumes = index.volumes()
    pairs = set(zip(index.texts("image_set_id"), index.texts("series_instance_uid"), strict=True))
    assert len(volumes) == len(pairs) == 6
    for volume in volumes:
        assert len(volume.rows) == 4
        assert {index.texts("series_instance_uid")[row] for row in volume.rows} == {volume.series_instance_uid}
        assert list(index.column("slice_index")[volume.rows]) == [0, 1, 2, 3]
    assert index.filter(np.zeros(len(index), dtype=bool)).volumes() == []


def test_version_digests_every_frame_id(index: FrameIndex) -> None:
    frame_ids = index.texts("frame_id")
    assert _replaced(index, "frame_id", frame_ids).version == index.version
    changed = [*frame_ids[:-1], frame_ids[-1][:-1] + ("0" if frame_ids[-1][-1] != "0" else "1")]
    assert _replaced(index, "frame_id", changed).version != index.version


def test_columns_fill_what_the_index_lacks_and_rows_read_one_frame(index: FrameIndex) -> None:
    positions = index.table.column("image_position").to_pylist()
    unknown = _replaced(index, "image_position", [None, *positions[1:]])
    assert np.isnan(unknown.column("image_position")[0]).all()
    np.testing.assert_array_equal(unknown.column("image_position")[1:], index.column("image_position")[1:])
    slices = index.table.column("slice_index").to_pylist()
    assert _replaced(index, "slice_index", [None, *slices[1:]]).column("slice_index")[0] == -1
    regular = index.table.column("series_regular").to_pylist()
    assert not _replaced(index, "series_regular", [None, *regular[1:]]).column("series_regular")[0]
    assert index.row(5)["frame_id"] == index.texts("frame_id")[5]
    assert index.row(5)["slice_index"] == int(index.column("slice_index")[5])


def test_a_list_column_of_another_width_or_type_is_not_an_index(index: FrameIndex) -> None:
    position = index.table.column_names.index("image_position")
    for width, kind in ((2, pa.float64()), (4, pa.float64()), (3, pa.float32())):
        other = pa.array([[0.0] * width] * len(index), pa.list_(kind, width))
        with pytest.raises(ConfigError, match="column image_position is"):
            FrameIndex(index.table.set_column(position, "image_position", other))


def test_a_slice_saves_and_loads_and_its_last_frame_id_is_checked(index: FrameIndex, tmp_path: Path) -> None:
    part = FrameIndex(index.table.slice(3, 10), index.info)  # buffers that start mid-way
    loaded = FrameIndex.load(part.save(tmp_path / "part.parquet"))
    assert loaded.table.equals(part.table) and loaded.texts("frame_id") == index.texts("frame_id")[3:13]

    table = pq.read_table(tmp_path / "part.parquet")
    frame_ids = table.column("frame_id").to_pylist()
    last = frame_ids[-1]
    frame_ids[-1] = last[:-1] + ("0" if last[-1] != "0" else "1")
    changed = table.set_column(table.column_names.index("frame_id"), "frame_id", pa.array(frame_ids))
    pq.write_table(changed.replace_schema_metadata(table.schema.metadata), tmp_path / "changed.parquet")
    with pytest.raises(ConfigError, match="content does not match its checksum"):
        FrameIndex.load(tmp_path / "changed.parquet")


def test_volumes_are_told_apart_whatever_their_codes(index: FrameIndex) -> None:
    """Image sets that share series codes' patterns (A holds the 6th series, B the 2nd and 3rd) stay apart."""
    owners = ["A", "B", "B", "C", "C", "A"]  # image set of each of the 6 series, in row order
    series = [f"1.2.3.{k}" for k in range(6) for _ in range(4)]
    image_sets = [owners[k] for k in range(6) for _ in range(4)]
    relabelled = _replaced(_replaced(index, "series_instance_uid", series), "image_set_id", image_sets)
    volumes = relabelled.volumes()
    assert [(v.image_set_id, v.series_instance_uid) for v in volumes] == list(zip(owners, series[::4], strict=True))
    assert [list(v.rows) for v in volumes] == [list(range(4 * k, 4 * k + 4)) for k in range(6)]
