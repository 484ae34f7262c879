"""Where labels come from: an index column, a CSV/Parquet table joined on a UID, or a callable.

>>> FrameDataset(index, client, labels="modality")                       # any index column
>>> FrameDataset(index, client, labels=TableLabels("labels.csv", on="series_instance_uid",
...                                                 key="SeriesInstanceUID", column="nodule"))
>>> FrameDataset(index, client, labels=lambda row: int(row["slice_index"] > 10))

Labels are resolved once, in the process that builds the dataset, into one numpy array: text
labels become class indices (``dataset.classes`` lists the names in index order).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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


#: How label values are read: class names, whole numbers or real numbers (None: inferred).
VALUE_TYPES = ("text", "int", "float")


def _kind(value: Any) -> str:
    if isinstance(value, (bool, np.bool_)):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return "text"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def infer_value_type(values: Sequence[Any], where: Callable[[int], str]) -> str:
    """The one type every value agrees on; a value that breaks the agreement is an error naming its row.

    Booleans and integers read as ``int``, floats as ``float``, strings as ``text`` (class names).
    Integers mixed with floats, numbers mixed with text, and text that looks like numbers are
    refused: each could silently renumber every class or change the label's dtype.
    """
    if not values:
        return "int"  # nothing labelled: every row reads -1 (unlabeled)
    kinds = [_kind(v) for v in values]
    found = sorted(set(kinds) - {"bool"} or {"int"})
    if len(found) > 1:
        first, other = found[0], found[-1]
        row = next(i for i, k in enumerate(kinds) if k == other)
        raise ConfigError(
            f"label {values[row]!r} ({where(row)}) is {other} where other labels are {first}; "
            "give value_type ('text', 'int' or 'float') or fix that value"
        )
    kind = found[0]
    if kind == "text":
        numeric = [_looks_numeric(str(v)) for v in values]
        if all(numeric):
            raise ConfigError(
                f"labels are text that reads as numbers ({where(0)}: {values[0]!r}); give value_type 'int' or "
                "'float' to read them as numbers, or 'text' to number them as classes in sorted order"
            )
        if any(numeric):
            row = next(i for i, n in enumerate(numeric) if not n)
            raise ConfigError(
                f"label {values[row]!r} ({where(row)}) is text where other labels are numbers; "
                "give value_type ('text', 'int' or 'float') or fix that value"
            )
    return kind


def convert_value(value: Any, value_type: str, where: str) -> Any:
    """``value`` as ``value_type``; a value that does not fit raises, naming ``where`` it is."""
    try:
        if value_type == "text":
            return str(value)
        if value_type == "float":
            if _kind(value) == "bool":
                raise ValueError
            return float(value)
        if _kind(value) in ("bool", "int"):
            return int(value)
        number = float(value)
        if number.is_integer():
            return int(number)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"label {value!r} ({where}) is not {value_type}")


@dataclass(frozen=True)
class LabelTypes:
    """How label values are read, decided explicitly or inferred only when every value agrees.

    Args:
        value_type: ``"text"`` (class names), ``"int"`` or ``"float"``; None infers it.
        classes: the class names in class-index order (implies ``"text"``); a value outside the
            list is an error naming its row. Without it, text labels are numbered in sorted order.
    """

    value_type: str | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.value_type is not None and self.value_type not in VALUE_TYPES:
            raise ConfigError(f"value_type must be one of {', '.join(VALUE_TYPES)} or None, not {self.value_type!r}")
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if self.value_type not in (None, "text"):
                raise ConfigError(f"classes are class names: value_type must be 'text', not {self.value_type!r}")
            if len(set(self.classes)) != len(self.classes) or not self.classes:
                raise ConfigError(f"classes must be distinct names, not {list(self.classes)}")

    def resolved_type(self, values: Sequence[Any], where: Callable[[int], str]) -> str:
        if self.classes is not None:
            return "text"
        return self.value_type or infer_value_type(values, where)

    def typed(self, values: Sequence[Any], where: Callable[[int], str]) -> tuple[str, list[Any]]:
        """The type decided (see :meth:`resolved_type`) and every present value converted to it."""
        value_type = self.resolved_type(values, where)
        typed = [convert_value(v, value_type, where(i)) for i, v in enumerate(values)]
        if self.classes is not None:
            known = set(self.classes)
            for i, name in enumerate(typed):
                if name not in known:
                    listed = ", ".join(self.classes)
                    raise ConfigError(f"label {name!r} ({where(i)}) is not one of the classes {listed}")
        return value_type, typed


@dataclass(frozen=True)
class ColumnLabels:
    """Labels from an index column, read as ``types`` says.

    >>> FrameDataset(index, client, labels=ColumnLabels("body_part", classes=("CHEST", "HEAD")))
    """

    column: str
    value_type: str | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        LabelTypes(self.value_type, self.classes)  # a bad value_type or class list fails here, not later

    @property
    def types(self) -> LabelTypes:
        return LabelTypes(self.value_type, self.classes)


@dataclass(frozen=True)
class TableLabels:
    """Labels from a table (CSV, Parquet, pyarrow or pandas) joined to the index on one key.

    Args:
        source: path to ``.csv``/``.parquet``, or a table.
        on: the index column to join on (patient, study or series UID, ...).
        column: the table column holding the label.
        key: the table column holding the join key (default: same name as ``on``). Keys are
            always read as text, so a PatientID ``0001`` joins as ``"0001"``.
        value_type: ``"text"`` (class names), ``"int"`` or ``"float"``; None infers it when
            every value agrees, and names the row that does not.
        classes: class names in class-index order; a value outside them names its row.
    """

    source: str | Path | Any
    on: str = "series_instance_uid"
    column: str = "label"
    key: str | None = None
    value_type: str | None = None
    classes: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.on not in JOIN_KEYS:
            raise ConfigError(f"labels can be joined on {', '.join(JOIN_KEYS)}, not {self.on!r}")
        LabelTypes(self.value_type, self.classes)  # a bad value_type or class list fails here, not later

    @property
    def types(self) -> LabelTypes:
        return LabelTypes(self.value_type, self.classes)

    def _where(self, row: int) -> str:
        """Where table row ``row`` is, as its user would look for it."""
        if isinstance(self.source, (str, Path)) and Path(self.source).suffix.lower() in (".csv", ".tsv"):
            return f"line {row + 2} of {self.source}, column {self.column!r}"  # line 1 is the header
        name = self.source if isinstance(self.source, (str, Path)) else "the label table"
        return f"row {row} of {name}, column {self.column!r}"

    def lookup(self) -> dict[str, Any]:
        """Join key -> label, every label read as :attr:`types` says (an unfit value names its row)."""
        table = self._table()
        key = self.key or self.on
        for name in (key, self.column):
            if name not in table.column_names:
                raise ConfigError(f"label table has no column {name!r}; it has {', '.join(table.column_names)}")
        keys = [str(k).strip() if k is not None else None for k in table.column(key).to_pylist()]
        raw = table.column(self.column).to_pylist()
        rows = [i for i, (k, v) in enumerate(zip(keys, raw, strict=True)) if k is not None and _present(v)]
        _, typed = self.types.typed([raw[i] for i in rows], lambda j: self._where(rows[j]))
        mapping: dict[str, Any] = {}
        for row, value in zip(rows, typed, strict=True):
            k = keys[row]
            assert k is not None
            if k in mapping and mapping[k] != value:
                raise ConfigError(
                    f"label table gives {k!r} two labels ({mapping[k]!r} and {value!r}, {self._where(row)})"
                )
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
            if self.value_type == "text" or self.classes is not None:
                text[self.column] = pa.string()
            convert = pa_csv.ConvertOptions(strings_can_be_null=True, column_types=text)
            return pa_csv.read_csv(path, parse_options=options, convert_options=convert)
        raise ConfigError(f"label tables are .csv, .tsv or .parquet, not {path.suffix}")


LabelSpec = str | ColumnLabels | TableLabels | Callable[[dict[str, Any]], Any] | Mapping[str, Any] | None


@dataclass(frozen=True)
class ResolvedLabels:
    """One label per index row; ``classes`` names the class indices of text labels.

    ``present`` marks rows that have a label; ``values`` holds -1 (integers) or NaN (floats)
    where they have none.
    """

    values: np.ndarray
    present: np.ndarray
    classes: list[str] | None


def _present(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        return False
    return not (isinstance(value, str) and not value.strip())


def encode_labels(raw: Sequence[Any], types: LabelTypes, where: Callable[[int], str]) -> ResolvedLabels:
    """One label per row as numbers: ints, floats, or class indices of text labels."""
    present = np.array([_present(r) for r in raw], dtype=bool)
    rows = np.flatnonzero(present)
    kept = [raw[int(i)] for i in rows]
    value_type, typed = types.typed(kept, lambda j: where(int(rows[j])))
    if not kept:
        value_type = "int"  # nothing labelled: every row reads -1
    if value_type == "float":
        values = np.full(len(raw), np.nan, np.float32)
        values[rows] = typed
        return ResolvedLabels(values, present, None)
    codes = np.full(len(raw), -1, np.int64)
    if value_type == "int":
        codes[rows] = typed
        return ResolvedLabels(codes, present, None)
    classes = list(types.classes) if types.classes is not None else sorted(set(typed))
    lookup = {name: code for code, name in enumerate(classes)}
    codes[rows] = [lookup[name] for name in typed]  # typed() refused any name outside explicit classes
    return ResolvedLabels(codes, present, classes)


def resolve_labels(index: FrameIndex, spec: LabelSpec) -> ResolvedLabels | None:
    """Evaluate a label spec for every row of ``index``."""
    if spec is None:
        return None

    def where(row: int) -> str:
        return f"index row {row}, series {index.table.column('series_instance_uid')[row].as_py()}"

    if isinstance(spec, str):
        spec = ColumnLabels(spec)
    if isinstance(spec, ColumnLabels):
        if spec.column not in index.table.column_names:
            raise ConfigError(f"no index column {spec.column!r} for labels; add it with build_index(extra_tags=[...])")
        return encode_labels(index.table.column(spec.column).to_pylist(), spec.types, where)
    if isinstance(spec, TableLabels):
        mapping = spec.lookup()  # already one type; each value named by its table row if not
        keys = index.table.column(spec.on).to_pylist()
        return encode_labels([mapping.get(k) if k is not None else None for k in keys], spec.types, where)
    if isinstance(spec, Mapping):
        keys = index.table.column("series_instance_uid").to_pylist()
        return encode_labels([spec.get(k) for k in keys], LabelTypes(), where)
    if callable(spec):
        return encode_labels([spec(row) for row in index.iter_rows()], LabelTypes(), where)
    raise ConfigError(
        f"labels must be a column name, ColumnLabels, TableLabels, a mapping or a callable, not {type(spec).__name__}"
    )
