"""Where labels come from: an index column, a CSV/Parquet table joined on a UID, or a callable.

>>> FrameDataset(index, client, labels="modality")                       # any index column
>>> FrameDataset(index, client, labels=TableLabels("labels.csv", on="series_instance_uid",
...                                                 key="SeriesInstanceUID", column="nodule"))
>>> FrameDataset(index, client, labels=lambda row: int(row["slice_index"] > 10))

Labels are resolved once, in the process that builds the dataset, into one numpy array: text
labels become class indices (``dataset.classes`` lists the names in index order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from ..errors import ConfigError
from ..index import FrameIndex

JOIN_KEYS = (
    "patient_id",
    "study_instance_uid",
    "series_instance_uid",
    "sop_instance_uid",
    "image_set_id",
    "accession_number",
)


#: How a table's label column is read: None lets the CSV reader infer it.
VALUE_TYPES = ("text", "int", "float")


@dataclass(frozen=True)
class TableLabels:
    """Labels from a table (CSV, Parquet, pyarrow or pandas) joined to the index on one key.

    Args:
        source: path to ``.csv``/``.parquet``, or a table.
        on: the index column to join on (patient, study or series UID, ...).
        column: the table column holding the label.
        key: the table column holding the join key (default: same name as ``on``). Keys are
            always read as text, so a PatientID ``0001`` joins as ``"0001"``.
        value_type: ``"text"`` (class names), ``"int"`` or ``"float"``; None infers it.
    """

    source: str | Path | Any
    on: str = "series_instance_uid"
    column: str = "label"
    key: str | None = None
    value_type: str | None = None

    def __post_init__(self) -> None:
        if self.on not in JOIN_KEYS:
            raise ConfigError(f"labels can be joined on {', '.join(JOIN_KEYS)}, not {self.on!r}")
        if self.value_type is not None and self.value_type not in VALUE_TYPES:
            raise ConfigError(f"value_type must be one of {', '.join(VALUE_TYPES)} or None, not {self.value_type!r}")

    def _typed(self, value: Any) -> Any:
        if value is None or self.value_type is None:
            return value
        try:
            return {"text": str, "int": int, "float": float}[self.value_type](value)
        except ValueError:
            raise ConfigError(f"label {value!r} in column {self.column!r} is not {self.value_type}") from None

    def lookup(self) -> dict[str, Any]:
        table = self._table()
        key = self.key or self.on
        for name in (key, self.column):
            if name not in table.column_names:
                raise ConfigError(f"label table has no column {name!r}; it has {', '.join(table.column_names)}")
        keys = [str(k).strip() if k is not None else None for k in table.column(key).to_pylist()]
        values = [self._typed(v) for v in table.column(self.column).to_pylist()]
        mapping: dict[str, Any] = {}
        for k, value in zip(keys, values, strict=True):
            if k is None:
                continue
            if k in mapping and mapping[k] != value:
                raise ConfigError(f"label table gives {k!r} two labels ({mapping[k]!r} and {value!r})")
            mapping[k] = value
        return mapping

    def _table(self) -> pa.Table:
        source = self.source
        if isinstance(source, pa.Table):
            return source
        if hasattr(source, "to_dict") and hasattr(source, "columns"):
            return pa.Table.from_pandas(source)
        path = Path(source)
        if not path.exists():
            raise ConfigError(f"label table {path} does not exist")
        if path.suffix.lower() == ".parquet":
            return pq.read_table(path)
        if path.suffix.lower() in (".csv", ".tsv"):
            options = pa_csv.ParseOptions(delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            text = {self.key or self.on: pa.string()}  # IDs are text: "0001" must not become 1
            if self.value_type == "text":
                text[self.column] = pa.string()
            convert = pa_csv.ConvertOptions(strings_can_be_null=True, column_types=text)
            return pa_csv.read_csv(path, parse_options=options, convert_options=convert)
        raise ConfigError(f"label tables are .csv, .tsv or .parquet, not {path.suffix}")


LabelSpec = str | TableLabels | Callable[[dict[str, Any]], Any] | Mapping[str, Any] | None


@dataclass(frozen=True)
class ResolvedLabels:
    """One label per index row; ``classes`` names the class indices of text labels."""

    values: np.ndarray
    present: np.ndarray
    classes: list[str] | None


def _encode(raw: list[Any]) -> ResolvedLabels:
    present = np.array([r is not None and not (isinstance(r, float) and np.isnan(r)) for r in raw], dtype=bool)
    kept = [r for r, p in zip(raw, present, strict=True) if p]
    if kept and all(isinstance(r, (bool, np.bool_)) for r in kept):
        return ResolvedLabels(
            np.array([int(bool(r)) if p else -1 for r, p in zip(raw, present, strict=True)], np.int64), present, None
        )
    if kept and all(isinstance(r, (int, np.integer)) and not isinstance(r, bool) for r in kept):
        return ResolvedLabels(
            np.array([int(r) if p else -1 for r, p in zip(raw, present, strict=True)], np.int64), present, None
        )
    if kept and all(isinstance(r, (int, float, np.number)) for r in kept):
        return ResolvedLabels(
            np.array([float(r) if p else np.nan for r, p in zip(raw, present, strict=True)], np.float32), present, None
        )
    classes = sorted({str(r) for r in kept})
    lookup = {name: code for code, name in enumerate(classes)}
    codes = np.array([lookup[str(r)] if p else -1 for r, p in zip(raw, present, strict=True)], np.int64)
    return ResolvedLabels(codes, present, classes)


def resolve_labels(index: FrameIndex, spec: LabelSpec) -> ResolvedLabels | None:
    """Evaluate a label spec for every row of ``index``."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec not in index.table.column_names:
            raise ConfigError(f"no index column {spec!r} for labels; add it with build_index(extra_tags=[...])")
        return _encode(index.table.column(spec).to_pylist())
    if isinstance(spec, TableLabels):
        mapping = spec.lookup()
        keys = index.table.column(spec.on).to_pylist()
        return _encode([mapping.get(k) if k is not None else None for k in keys])
    if isinstance(spec, Mapping):
        keys = index.table.column("series_instance_uid").to_pylist()
        return _encode([spec.get(k) for k in keys])
    if callable(spec):
        return _encode([spec(row) for row in index.iter_rows()])
    raise ConfigError(f"labels must be a column name, TableLabels, a mapping or a callable, not {type(spec).__name__}")
