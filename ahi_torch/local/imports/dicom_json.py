"""Turn pydicom datasets into AHI's metadata JSON: keyword keys, hex private keys, levels, VR rules.

AHI normalises every instance into four levels (Patient, Study, Series, Instance) by DICOM module
(see ``levels``) and writes each attribute as:

* standard attributes under their PS3.6 keyword; private and unknown ones under 8 upper-case hex
  digits, their VR recorded in the instance's ``DICOMVRs`` map;
* text as written, padding kept (``"1 "``), multi-valued text as arrays, trailing NUL removed;
* US/SS/UL/SL/FL/FD/SV/UV as JSON numbers, binary VRs (OB, OW, UN, ...) as base64;
* sequences as arrays of objects keyed the same way; empty elements as ``null``;
* ``PixelData`` as a ``null`` placeholder (frames live in ``ImageFrames``).
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from typing import Any

import pydicom
from pydicom.charset import convert_encodings, decode_bytes
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset

from ..models.levels import level_of

_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW", "US or SS or OW"}
_NUMBER_VRS = {"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "US or SS"}
_UNSPLIT_TEXT_VRS = {"LT", "ST", "UT", "UR"}
_CHARSET_VRS = {"SH", "LO", "ST", "LT", "UT", "PN", "UC"}
_PIXEL_KEYWORDS = {"PixelData", "FloatPixelData", "DoubleFloatPixelData"}
_PRIVATE_BINARY_LIMIT = 1 << 20  # AHI keeps larger private binaries out of band


def attribute_key(tag: int) -> str:
    """The JSON key of a tag: its keyword, or 8 upper-case hex digits for private/unknown tags."""
    keyword = keyword_for_tag(tag) if not (tag >> 16) % 2 else ""
    return keyword or f"{tag:08X}"


def _text_value(raw: bytes, vr: str, encodings: list[str]) -> Any:
    text = decode_bytes(raw, encodings, set()) if vr in _CHARSET_VRS else raw.decode("latin-1")
    text = text.rstrip("\x00")
    if not text.strip(" "):
        return None
    if vr in _UNSPLIT_TEXT_VRS or "\\" not in text:
        return text
    return text.split("\\")


def _json_number(value: Any) -> Any:
    # JSON has no NaN or infinity; AHI writes such values as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _element_value(raw: RawDataElement | DataElement | None, elem: DataElement, encodings: list[str]) -> Any:
    vr = str(elem.VR)
    value = elem.value
    if vr == "SQ":
        return [dataset_attributes(item, encodings)[0] for item in value]
    if value is None or (isinstance(value, (bytes, str, list)) and len(value) == 0):
        return None
    if vr in _BINARY_VRS:
        data = value if isinstance(value, bytes) else bytes(value)
        return base64.b64encode(data).decode("ascii")
    if vr in _NUMBER_VRS:
        if isinstance(value, (list, pydicom.multival.MultiValue)):
            return [_json_number(v) for v in value]
        return _json_number(value)
    if vr == "AT":
        tags = value if isinstance(value, (list, pydicom.multival.MultiValue)) else [value]
        rendered = [f"{int(t):08X}" for t in tags]
        return rendered if len(rendered) > 1 else rendered[0]
    if isinstance(raw, RawDataElement) and isinstance(raw.value, bytes):
        return _text_value(raw.value, vr, encodings)
    if isinstance(value, (list, pydicom.multival.MultiValue)):
        return [str(v) for v in value]
    return str(value)


def dataset_attributes(ds: Dataset, encodings: list[str] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """All attributes of one dataset level (no level split) and the VRs of its private tags."""
    if encodings is None:
        charset = ds.get("SpecificCharacterSet")
        encodings = convert_encodings(charset) if charset else ["iso8859"]
    attributes: dict[str, Any] = {}
    vrs: dict[str, str] = {}
    for tag in list(ds.keys()):
        if tag.element == 0 or tag == 0xFFFCFFFC:
            continue
        raw = ds.get_item(tag)
        elem = ds[tag]
        key = attribute_key(int(tag))
        if key in _PIXEL_KEYWORDS:
            attributes[key] = None
            continue
        private = tag.is_private or not keyword_for_tag(tag)
        if (
            private
            and str(elem.VR) in _BINARY_VRS
            and elem.value is not None
            and len(elem.value) > _PRIVATE_BINARY_LIMIT
        ):
            continue
        attributes[key] = _element_value(raw, elem, encodings)
        if private:
            vrs[key] = str(elem.VR)
    return attributes, vrs


def split_levels(ds: Dataset) -> dict[str, Any]:
    """One instance as ``{"Patient": {...}, "Study": {...}, "Series": {...}, "Instance": {...}, "DICOMVRs": {...}}``.

    File meta (group 0002) goes to the instance level, as AHI does.
    """
    attributes, vrs = dataset_attributes(ds)
    meta_attributes, meta_vrs = dataset_attributes(ds.file_meta) if getattr(ds, "file_meta", None) else ({}, {})
    levels: dict[str, dict[str, Any]] = {"Patient": {}, "Study": {}, "Series": {}, "Instance": dict(meta_attributes)}
    for key, value in attributes.items():
        levels[level_of(key)][key] = value
    return {**levels, "DICOMVRs": {**meta_vrs, **vrs}}


def merge_missing(target: dict[str, Any], source: dict[str, Any], keys: Iterable[str] | None = None) -> None:
    """Fill attributes absent or null in ``target`` from ``source`` (first non-null wins)."""
    for key in keys if keys is not None else source:
        if target.get(key) is None and source.get(key) is not None:
            target[key] = source[key]
