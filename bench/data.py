"""The benchmark dataset: synthetic 512x512 int16 CT series imported into a local AHI."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ahi_torch.sample.synthetic import SeriesSpec, write_series

from .service import ServiceProcess


@dataclass(frozen=True)
class Size:
    name: str
    series: int
    slices: int
    pixels: int
    frames_for_service: int
    volumes: int
    #: Frames of the synthetic archive whose index is built from generated metadata (issue #15).
    index_frames: int


SIZES = {
    "full": Size("full", series=64, slices=64, pixels=512, frames_for_service=1000, volumes=8, index_frames=5_000_000),
    "quick": Size("quick", series=8, slices=48, pixels=512, frames_for_service=400, volumes=3, index_frames=300_000),
    "smoke": Size("smoke", series=2, slices=6, pixels=64, frames_for_service=20, volumes=2, index_frames=3_000),
}


@dataclass
class Dataset:
    datastore_id: str
    root: Path
    write_seconds: float
    import_seconds: float
    files: int
    upload_seconds: float = 0.0
    job_seconds: float = 0.0
    job_cpu_seconds: float = 0.0
    #: What ``measure(root)`` gave right before the import job and right after it.
    measured_beside_job: list[float] = field(default_factory=list)


def build(service: ServiceProcess, size: Size, root: Path, measure: Callable[[Path], float] | None = None) -> Dataset:
    """Write the series under ``root`` and import them; ``measure(root)`` runs right before and after the job.

    A rate the import is compared with is measured on both sides of it: on this shared machine
    the same work's speed drifts by a fifth within minutes, and the mean of the two brackets
    the job's own conditions.
    """
    started = time.perf_counter()
    for series in range(size.series):
        spec = SeriesSpec(
            patient_id=f"BENCH-{series:03d}",
            study_key=f"bench-{series}",
            series_key=f"b{series:03d}",
            slices=size.slices,
            rows=size.pixels,
            columns=size.pixels,
            pixel_spacing=(0.7, 0.7),
            nodule=bool(series % 2),
            seed=series,
        )
        write_series(root / spec.series_key, spec)
    written = time.perf_counter()
    result = service.import_dicom(root, (lambda: measure(root)) if measure is not None else None)
    if result.status != "COMPLETED" or result.failures:
        raise RuntimeError(f"benchmark import failed: {result.message or result.failures[:3]}")
    return Dataset(
        result.datastore_id,
        root,
        written - started,
        service.import_seconds["total"],
        size.series * size.slices,
        service.import_seconds["upload"],
        service.import_seconds["job"],
        service.import_seconds["job_cpu"],
        service.measured_beside_job,
    )
