"""One input file of an import, examined: parsed, checked, split into levels, its frames stored as AHI stores them.

:func:`examine` is pure (bytes in, a picklable result out), so the importer runs it in a pool
of processes sized to the machine (:mod:`.examiners`): transcoding to HTJ2K and verifying every
frame is CPU work that threads cannot share out under the GIL. :func:`examine_into` also writes
the stored frames as blob files where it runs and returns only their ``ImageFrames`` entries, so
a frame's bytes never travel back to the importer's process; the importer's process keeps every
record (SQLite), and a frame file no committed record names is swept as an orphan.

>>> result = examine(dicom_bytes, "HTJ2K")
>>> result.failure or (result.stored_syntax, len(result.frames))
('1.2.840.10008.1.2.4.202', 1)
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom

from ..models.store import new_id, write_frame_file
from .dicom_json import split_levels
from .transcode import PixelDataProblem, StoredFrame, store_frames

REQUIRED = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


@dataclass
class Examined:
    """What one file holds, or why it cannot be imported (``failure`` = (exception type, message))."""

    levels: dict[str, Any] = field(default_factory=dict)
    stored_syntax: str | None = None
    frames: list[StoredFrame] = field(default_factory=list)
    failure: tuple[str, str] | None = None


def _refused(message: str) -> Examined:
    return Examined(failure=("ValidationException", message))


def examine(data: bytes, storage_format: str) -> Examined:
    """Parse and check one DICOM P10 file and store its frames (transcoded and verified)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception:  # pydicom raises InvalidDicomError and assorted parse errors
        return _refused("The file is not a valid DICOM P10 object")
    if not getattr(ds, "file_meta", None) or "TransferSyntaxUID" not in ds.file_meta:
        return _refused("DICOM attribute TransferSyntaxUID does not exist")
    for keyword in REQUIRED:
        if not str(ds.get(keyword, "") or "").strip():
            return _refused(f"DICOM attribute {keyword} does not exist")
    try:
        levels = split_levels(ds)
        syntax, frames = store_frames(ds, storage_format)
    except PixelDataProblem as exc:
        return _refused(str(exc))
    except Exception as exc:
        return _refused(f"The file could not be parsed: {type(exc).__name__}")
    return Examined(levels, syntax, frames)


@dataclass
class Stored:
    """A file examined and its frames written: what the importer records (``failure`` as in :class:`Examined`)."""

    levels: dict[str, Any] = field(default_factory=dict)
    stored_syntax: str | None = None
    image_frames: list[dict[str, Any]] = field(default_factory=list)
    failure: tuple[str, str] | None = None


def examine_into(data: bytes, storage_format: str, frames_dir: Path) -> Stored:
    """:func:`examine`, then write each stored frame under ``frames_dir`` with a new frame ID."""
    examined = examine(data, storage_format)
    if examined.failure is not None:
        return Stored(failure=examined.failure)
    entries = []
    for frame in examined.frames:
        frame_id = new_id()
        write_frame_file(frames_dir, frame_id, frame.data)
        entries.append(frame.image_frame_entry(frame_id))
    return Stored(examined.levels, examined.stored_syntax, entries)
