"""One input file of an import, examined: parsed, checked, split into levels, its frames stored as AHI stores them.

:func:`examine` is pure (bytes in, a picklable result out), so the importer runs it in a pool
of processes sized to the machine: transcoding to HTJ2K and verifying every frame is CPU work
that threads cannot share out under the GIL. The importer's own process keeps every state
change (frame files, SQLite) in one place.

>>> result = examine(dicom_bytes, "HTJ2K")
>>> result.failure or (result.stored_syntax, len(result.frames))
('1.2.840.10008.1.2.4.202', 1)
"""

from __future__ import annotations

import io
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any

import pydicom

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


def examiner_pool(processes: int | None = None) -> Executor:
    """A pool of ``processes`` (default: every core) that runs :func:`examine`.

    Workers come from a fork server: the service runs uvicorn and import threads, and forking a
    threaded process can copy a lock some thread holds.
    """
    count = processes or os.cpu_count() or 1
    return ProcessPoolExecutor(max_workers=count, mp_context=get_context("forkserver"), initializer=_one_file_at_a_time)


def _one_file_at_a_time() -> None:
    """In a pool worker no other thread runs the codec: one decode per reduced level is enough."""
    from . import transcode

    transcode.CODEC_SHARED_BY_THREADS = False
