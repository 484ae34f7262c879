"""The benchmark dataset: synthetic 512x512 int16 CT series imported into a local AHI."""

from __future__ import annotations

import time
from dataclasses import dataclass
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


def build(service: ServiceProcess, size: Size, root: Path) -> Dataset:
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
    result = service.import_dicom(root)
    if result.status != "COMPLETED" or result.failures:
        raise RuntimeError(f"benchmark import failed: {result.message or result.failures[:3]}")
    return Dataset(
        result.datastore_id,
        root,
        written - started,
        time.perf_counter() - written,
        size.series * size.slices,
        service.import_seconds["upload"],
        service.import_seconds["job"],
        service.import_seconds["job_cpu"],
    )
