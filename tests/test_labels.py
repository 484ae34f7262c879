"""Label tables join on text keys, and the label's type is the user's choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ahi_torch.datasets import FrameDataset, TableLabels
from ahi_torch.errors import ConfigError
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import SeriesSpec, write_series


@pytest.fixture(scope="module")
def index(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> FrameIndex:
    root = tmp_path_factory.mktemp("labels")
    for patient in ("0001", "0002"):
        write_series(root / patient, SeriesSpec(patient_id=patient, series_key=patient, slices=2, rows=8, columns=8))
    result = ahi.import_dicom(root)
    return build_index(ahi.client(), result.datastore_id, progress=False)


def test_numeric_looking_ids_join_as_text(ahi, index: FrameIndex, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    table = tmp_path / "grades.csv"
    table.write_text("PatientID,grade\n0001,3\n0002,7\n")
    labels = TableLabels(table, on="patient_id", key="PatientID", column="grade")
    dataset = FrameDataset(index, ahi.client(), labels=labels)
    by_patient = {dataset[i]["meta"]["patient_id"]: dataset[i]["label"] for i in range(len(dataset))}
    assert by_patient == {"0001": torch.tensor(3), "0002": torch.tensor(7)}

    as_text = FrameDataset(index, ahi.client(), labels=TableLabels(table, "patient_id", "grade", "PatientID", "text"))
    assert as_text.classes == ["3", "7"]
    as_float = FrameDataset(index, ahi.client(), labels=TableLabels(table, "patient_id", "grade", "PatientID", "float"))
    assert as_float[0]["label"].dtype == torch.float32


def test_bad_label_types_are_clear(tmp_path: Path) -> None:
    table = tmp_path / "grades.csv"
    table.write_text("PatientID,grade\n0001,high\n")
    with pytest.raises(ConfigError, match="'high' in column 'grade' is not int"):
        TableLabels(table, "patient_id", "grade", "PatientID", "int").lookup()
    with pytest.raises(ConfigError, match="value_type must be one of"):
        TableLabels(table, "patient_id", "grade", "PatientID", "integer")
    with pytest.raises(ConfigError, match="no column 'Patient'"):
        TableLabels(table, "patient_id", "grade", "Patient").lookup()
