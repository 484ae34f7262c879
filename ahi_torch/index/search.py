"""SearchImageSets criteria, built from plain Python values.

AHI accepts at most two filters per search (ANDed). Combine several :class:`Search` objects to
OR them (the index unions their results); ``EQUAL`` filters take one value, ``BETWEEN`` filters
take a range of ``createdAt``, ``updatedAt`` or study date/time.

>>> from ahi_torch.index import search
>>> search.Search(search.patient_id("P001"), search.study_date_between("20240101", "20241231")).criteria()
{'filters': [{'operator': 'EQUAL', 'values': [{'DICOMPatientId': 'P001'}]}, {'operator': 'BETWEEN', ...}]}
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

Filter = dict[str, Any]
SORT_FIELDS = ("updatedAt", "createdAt", "DICOMStudyDateAndTime")


def _equal(member: str, value: Any) -> Filter:
    return {"operator": "EQUAL", "values": [{member: value}]}


def patient_id(value: str) -> Filter:
    return _equal("DICOMPatientId", value)


def accession_number(value: str) -> Filter:
    return _equal("DICOMAccessionNumber", value)


def study_id(value: str) -> Filter:
    return _equal("DICOMStudyId", value)


def study_uid(value: str) -> Filter:
    return _equal("DICOMStudyInstanceUID", value)


def series_uid(value: str) -> Filter:
    return _equal("DICOMSeriesInstanceUID", value)


def is_primary(value: bool = True) -> Filter:
    return _equal("isPrimary", value)


def _timestamp(value: dt.datetime | float | str) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, tz=dt.timezone.utc)
    try:
        return _timestamp(float(value))  # seconds since the epoch, as text
    except ValueError:
        pass
    try:
        return _timestamp(dt.datetime.fromisoformat(value))
    except ValueError:
        raise ConfigError(f"{value!r} is neither an ISO 8601 time nor seconds since the epoch") from None


def created_between(start: dt.datetime | float | str, end: dt.datetime | float | str) -> Filter:
    return {"operator": "BETWEEN", "values": [{"createdAt": _timestamp(start)}, {"createdAt": _timestamp(end)}]}


def updated_between(start: dt.datetime | float | str, end: dt.datetime | float | str) -> Filter:
    return {"operator": "BETWEEN", "values": [{"updatedAt": _timestamp(start)}, {"updatedAt": _timestamp(end)}]}


def _study_date(value: str | dt.date, time: str | None) -> dict[str, str]:
    text = value.strftime("%Y%m%d") if isinstance(value, dt.date) else str(value).replace("-", "")
    if len(text) != 8 or not text.isdigit():
        raise ConfigError(f"study dates are YYYYMMDD, not {value!r}")
    result = {"DICOMStudyDate": text}
    if time:
        result["DICOMStudyTime"] = time
    return result


def study_date_between(
    start: str | dt.date, end: str | dt.date, start_time: str | None = None, end_time: str | None = None
) -> Filter:
    """Studies dated from ``start`` to ``end`` inclusive (YYYYMMDD); times are HHMMSS."""
    return {
        "operator": "BETWEEN",
        "values": [
            {"DICOMStudyDateAndTime": _study_date(start, start_time)},
            {"DICOMStudyDateAndTime": _study_date(end, end_time or "235959.999999")},
        ],
    }


@dataclass(frozen=True)
class FilterKind:
    """What a named filter takes: ``"text"`` (one ID), ``"bool"`` or ``"range"`` (two bounds)."""

    make: Any
    takes: str


#: Every filter by the name configs and the CLI use. IDs are text: ``0123`` stays ``"0123"``.
FILTERS: dict[str, FilterKind] = {
    "patient_id": FilterKind(patient_id, "text"),
    "accession_number": FilterKind(accession_number, "text"),
    "study_id": FilterKind(study_id, "text"),
    "study_uid": FilterKind(study_uid, "text"),
    "series_uid": FilterKind(series_uid, "text"),
    "is_primary": FilterKind(is_primary, "bool"),
    "created_between": FilterKind(created_between, "range"),
    "updated_between": FilterKind(updated_between, "range"),
    "study_date_between": FilterKind(study_date_between, "range"),
}


def named_filter(name: str, value: Any, where: str = "filter") -> Filter:
    """The filter ``{name: value}`` of a config, checked: a ConfigError naming ``where`` otherwise.

    >>> named_filter("patient_id", "0123")
    {'operator': 'EQUAL', 'values': [{'DICOMPatientId': '0123'}]}
    """
    kind = FILTERS.get(name)
    if kind is None:
        raise ConfigError(f"{where}.{name}: unknown filter (allowed: {', '.join(FILTERS)})")
    args: list[Any]
    if kind.takes == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {value!r}")
        args = [value]
    elif kind.takes == "range":
        if not isinstance(value, list) or len(value) != 2:
            raise ConfigError(f"{where}.{name}: expected [start, end], got {value!r}")
        args = [str(v) for v in value]
    else:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.{name}: expected an ID as text, got {value!r}")
        args = [value]
    try:
        result: Filter = kind.make(*args)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where}.{name}: {error}") from None
    return result


@dataclass(frozen=True)
class Search:
    """One SearchImageSets query: zero to two filters and an optional sort."""

    filters: tuple[Filter, ...] = ()
    sort_field: str | None = None
    descending: bool = True

    def __init__(self, *filters: Filter, sort_field: str | None = None, descending: bool = True) -> None:
        if len(filters) > 2:
            raise ConfigError("AHI allows at most two filters per search; combine several Search objects instead")
        if sort_field is not None and sort_field not in SORT_FIELDS:
            raise ConfigError(f"sort_field must be one of {', '.join(SORT_FIELDS)}, not {sort_field!r}")
        object.__setattr__(self, "filters", tuple(filters))
        object.__setattr__(self, "sort_field", sort_field)
        object.__setattr__(self, "descending", descending)

    def criteria(self) -> dict[str, Any]:
        """The ``searchCriteria`` payload."""
        criteria: dict[str, Any] = {}
        if self.filters:
            criteria["filters"] = [dict(f) for f in self.filters]
        if self.sort_field:
            criteria["sort"] = {"sortField": self.sort_field, "sortOrder": "DESC" if self.descending else "ASC"}
        return criteria

    def with_filter(self, extra: Filter) -> Search:
        return Search(*self.filters, extra, sort_field=self.sort_field, descending=self.descending)

    def describe(self) -> list[dict[str, Any]]:
        """JSON-friendly form (timestamps as ISO text) for index metadata."""

        def plain(value: Any) -> Any:
            if isinstance(value, dt.datetime):
                return value.isoformat()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list):
                return [plain(v) for v in value]
            return value

        return [plain(f) for f in self.filters]

    @classmethod
    def from_description(cls, filters: list[dict[str, Any]]) -> Search:
        def revive(value: Any, key: str = "") -> Any:
            if key in ("createdAt", "updatedAt") and isinstance(value, str):
                return _timestamp(value)
            if isinstance(value, dict):
                return {k: revive(v, k) for k, v in value.items()}
            if isinstance(value, list):
                return [revive(v, key) for v in value]
            return value

        return cls(*[revive(f) for f in filters])
