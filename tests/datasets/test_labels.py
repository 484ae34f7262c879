"""Label tables join on text keys, and the label's type is the user's choice."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ahi_torch.datasets import FrameDataset, LabelTypes, TableLabels
from ahi_torch.datasets.labels import encode_labels
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


def test_numeric_looking_ids_join_as_text(ahi: LocalAHI, index: FrameIndex, tmp_path: Path) -> None:
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
    with pytest.raises(ConfigError, match=r"label 'high' \(line 2 of .*grades\.csv, column 'grade'\) is not int"):
        TableLabels(table, "patient_id", "grade", "PatientID", "int").lookup()
    with pytest.raises(ConfigError, match="value_type must be one of"):
        TableLabels(table, "patient_id", "grade", "PatientID", "integer")
    with pytest.raises(ConfigError, match="no column 'Patient'"):
        TableLabels(table, "patient_id", "grade", "Patient").lookup()


def test_a_stray_value_never_renumbers_the_classes(tmp_path: Path) -> None:
    """Issue 22.3: "1,2,2,2?" became classes [0, 1, 1, 2]; now the stray value is named by its line."""
    table = tmp_path / "grades.csv"
    table.write_text("PatientID,grade\n0001,1\n0002,2\n0003,2\n0004,2?\n")
    with pytest.raises(ConfigError, match=r"label '2\?' \(line 5 of .*\) is text where other labels are numbers"):
        TableLabels(table, "patient_id", "grade", "PatientID").lookup()
    with pytest.raises(ConfigError, match=r"label '2\?' \(line 5 .*\) is not int"):
        TableLabels(table, "patient_id", "grade", "PatientID", "int").lookup()
    as_text = TableLabels(table, "patient_id", "grade", "PatientID", "text").lookup()
    assert as_text == {"0001": "1", "0002": "2", "0003": "2", "0004": "2?"}, "asked for text: class names"
    with pytest.raises(ConfigError, match=r"label '2\?' \(line 5 .*\) is not one of the classes 1, 2"):
        TableLabels(table, "patient_id", "grade", "PatientID", classes=("1", "2")).lookup()


def test_one_float_among_integers_is_an_error_not_a_float_label(tmp_path: Path) -> None:
    table = tmp_path / "grades.csv"
    table.write_text("PatientID,grade\n0001,1\n0002,1.5\n")
    with pytest.raises(ConfigError, match=r"value_type"):
        encode_labels([1, 2, 1.0], LabelTypes(), lambda row: f"row {row}")
    with pytest.raises(ConfigError, match=r"label 1\.5 \(line 3 .*\) is not int"):
        TableLabels(table, "patient_id", "grade", "PatientID", "int").lookup()
    floats = encode_labels([1, 2, 1.5], LabelTypes("float"), str)
    assert floats.values.dtype == np.float32 and floats.values.tolist() == [1.0, 2.0, 1.5]
    ints = encode_labels([1, 2.0, True], LabelTypes("int"), str)
    assert ints.values.dtype == np.int64 and ints.values.tolist() == [1, 2, 1], "whole floats are ints when asked"


def test_text_that_reads_as_numbers_needs_a_type() -> None:
    with pytest.raises(ConfigError, match="text that reads as numbers"):
        encode_labels(["1", "2", "10"], LabelTypes(), str)
    assert encode_labels(["1", "2", "10"], LabelTypes("int"), str).values.tolist() == [1, 2, 10]
    by_name = encode_labels(["1", "2", "10"], LabelTypes("text"), str)
    assert by_name.classes == ["1", "10", "2"] and by_name.values.tolist() == [0, 2, 1]


def test_explicit_classes_keep_their_order_and_refuse_others() -> None:
    labels = encode_labels(["benign", None, "malignant"], LabelTypes(classes=("malignant", "benign")), str)
    assert labels.classes == ["malignant", "benign"] and labels.values.tolist() == [1, -1, 0]
    assert labels.present.tolist() == [True, False, True]
    with pytest.raises(ConfigError, match="classes must be distinct"):
        LabelTypes(classes=("a", "a"))
    with pytest.raises(ConfigError, match="value_type must be 'text'"):
        LabelTypes("int", classes=("a",))


def test_a_literal_minus_one_is_not_the_unlabeled_marker(ahi: LocalAHI, index: FrameIndex) -> None:
    from ahi_torch.config import build_sampler

    series = index.texts("series_instance_uid")
    first = series[0]
    mapping = {s: (-1 if s == first else 1) for s in series}
    with pytest.raises(ConfigError, match=r"label -1 \(index row \d+\) is the marker of an unlabeled frame"):
        FrameDataset(index, ahi.client(), labels=mapping, unlabeled="keep")
    dataset = FrameDataset(index, ahi.client(), labels=mapping)  # unlabeled="error": -1 is a real label
    assert dataset.labels is not None and dataset.labels.present.all()
    from ahi_torch.config.schema import Config, LoaderConfig

    weighted = build_sampler(Config(loader=LoaderConfig(sampler="weighted")), dataset)
    drawn = set(weighted.global_order(0).tolist())
    minus_one = {i for i, s in enumerate(series) if s == first}
    assert drawn & minus_one, "items labelled -1 are drawn like any other"


_label_values = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=50),
    st.floats(min_value=-10, max_value=10, allow_nan=False),
    st.sampled_from(["1", "2", "2?", "benign", "malignant", " ", "3.5"]),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(_label_values, min_size=1, max_size=12), value_type=st.sampled_from([None, "int", "float", "text"])
)
def test_any_mix_of_label_values_parses_to_what_it_says_or_names_the_row(values, value_type) -> None:  # type: ignore[no-untyped-def]
    """Labels either read as exactly the values given, or fail with a message that names the row."""
    try:
        labels = encode_labels(values, LabelTypes(value_type), lambda row: f"row {row}")
    except ConfigError as error:
        assert re.search(r"row \d+", str(error)), str(error)
        return
    present = [v is not None and not (isinstance(v, str) and not v.strip()) for v in values]
    assert labels.present.tolist() == present
    kept = [v for v, p in zip(values, present, strict=True) if p]
    read = labels.values[labels.present]
    if labels.classes is not None:
        assert [labels.classes[int(code)] for code in read] == [str(v) for v in kept]
        assert labels.classes == sorted(set(labels.classes))
    elif labels.values.dtype.kind == "f":
        assert read.tolist() == pytest.approx([float(v) for v in kept], rel=1e-6, abs=1e-6)
    else:
        assert read.tolist() == [int(float(v)) for v in kept]
        assert all(float(v) == int(float(v)) for v in kept), "an int label is exactly the value given"
    if value_type is None and kept:
        kinds = {type(v) for v in kept} - {bool}
        assert len(kinds) <= 1 or kinds == {int}, "inferred only when every value agrees"


def test_labels_from_a_config_or_a_callable_follow_the_same_rules(
    ahi: LocalAHI, index: FrameIndex, tmp_path: Path
) -> None:
    """The neighbours of TableLabels: a config's labels section and a callable decide types the same way."""
    from ahi_torch.config import build_dataset, load

    series = index.texts("series_instance_uid")
    with pytest.raises(ConfigError, match=r"label 'x' \(index row \d+, series .*\) is text where other labels"):
        FrameDataset(index, ahi.client(), labels=lambda row: "x" if row["series_instance_uid"] == series[0] else 1)
    config = tmp_path / "c.yaml"
    config.write_text(
        f"connection: {{endpoint_url: '{ahi.endpoint_url}'}}\ndatastore: {{id: {index.info['datastore_id']}}}\n"
        f"index: {{path: '{tmp_path / 'i.parquet'}'}}\ncache: {{enabled: false}}\n"
        "labels: {column: patient_id, classes: ['0002', '0001']}\n"
    )
    dataset = build_dataset(load(config), progress=False)
    assert dataset.classes == ["0002", "0001"], "the config's class order, not sorted order"
    by_patient = {dataset[i]["meta"]["patient_id"]: int(dataset[i]["label"]) for i in range(len(dataset))}
    assert by_patient == {"0002": 0, "0001": 1}
    with pytest.raises(ConfigError, match=r"label '0002' \(index row \d+, .*\) is not one of the classes 0001"):
        build_dataset(load(config, ["labels.classes=['0001']"]), progress=False)
