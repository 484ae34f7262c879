"""Shared fixtures: one local AHI for the session, synthetic and real DICOM, imported data stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from ahi_torch.local import LocalAHI, Quotas, ServiceSettings
from ahi_torch.local.imports.uploads import ImportResult
from ahi_torch.sample.synthetic import SeriesSpec, oblique, write_multiframe, write_rgb, write_series

# Never let a test reach real AWS or read the developer's credentials.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_PROFILE", None)

#: Real files shipped with pydicom and pydicom-data, loaded by name (a wildcard tries the network).
REAL_FILES = [
    "CT_small.dcm",  # 128x128 int16, explicit VR LE
    "MR_small_RLE.dcm",  # RLE lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless
    "emri_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless, 10 frames
    "emri_small_big_endian.dcm",  # explicit VR big endian, 10 frames
    "693_J2KI.dcm",  # lossy JPEG 2000 512x512 int16: kept as imported (.4.91)
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline YBR_FULL: kept as imported (.4.50)
    "SC_rgb_rle_16bit.dcm",  # RGB 16-bit RLE
    "US1_UNCR.dcm",  # RGB ultrasound
    "liver.dcm",  # binary SEG, 1 bit allocated, 3 frames: kept bit-packed (.1.2.1)
    "MR_small_implicit.dcm",  # implicit VR LE
]

#: Fixtures that bring the local AHI: a test taking one is a ``service`` test (``make test-fast`` leaves them out).
SERVICE_FIXTURES = frozenset({"ahi", "synthetic_import", "real_import"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.service)


# One session-wide service serves every test module, each with its own data store: more than AHI's
# default quota of 10 (the quota itself is tested in local/test_conformance.py).
# Every import of the session service is parsed and transcoded in its process pool (as
# `ahi-torch local serve` does), so the strict per-frame import tests check that path; the other
# services of the suite use the importer's threads (the embedded default).
SETTINGS = ServiceSettings(
    check_responses=True,
    transition_seconds=0.05,
    quotas=Quotas(max_datastores=40),
    import_processes=0,
    import_pool_min_files=1,
)


def real_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"pydicom test file {name} is not installed (pip install pydicom-data)"
    return Path(path)


@pytest.fixture(scope="session")
def ahi() -> Iterator[LocalAHI]:
    with LocalAHI(settings=SETTINGS) as service:
        yield service


@dataclass
class ImportedData:
    """Files written for an import, and what the import made of them."""

    root: Path
    result: ImportResult
    specs: dict[str, SeriesSpec]

    @property
    def datastore_id(self) -> str:
        return self.result.datastore_id

    def source(self, input_file: str) -> pydicom.Dataset:
        relative = input_file.split("/", 2)[2]
        return pydicom.dcmread(self.root / relative)


@pytest.fixture(scope="session")
def synthetic_import(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> ImportedData:
    """A 24-slice oblique CT series (shuffled InstanceNumbers), a multi-frame MR and an RGB image."""
    root = tmp_path_factory.mktemp("synthetic")
    ct = SeriesSpec(
        series_key="ct",
        slices=24,
        rows=96,
        columns=80,
        orientation=oblique(20.0),
        shuffle_instance_numbers=True,
        nodule=True,
    )
    mr = SeriesSpec(patient_id="SYN-MR", study_key="mr-study", series_key="mr", modality="MR", rows=48, columns=40)
    rgb = SeriesSpec(patient_id="SYN-RGB", study_key="rgb-study", series_key="rgb", rows=30, columns=50)
    write_series(root / "ct", ct)
    write_multiframe(root / "mr", mr, frames=6)
    write_rgb(root / "rgb", rgb)
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("not a DICOM file")
    result = ahi.import_dicom(root)
    assert result.status == "COMPLETED", result.message
    return ImportedData(root, result, {"ct": ct, "mr": mr, "rgb": rgb})


@pytest.fixture(scope="session")
def real_import(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> ImportedData:
    """Real pydicom sample files in many transfer syntaxes."""
    root = tmp_path_factory.mktemp("real")
    for name in REAL_FILES:
        (root / name).write_bytes(real_file(name).read_bytes())
    result = ahi.import_dicom(root)
    assert result.status == "COMPLETED", result.message
    return ImportedData(root, result, {})


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def serve_subprocess(data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    """``ahi-torch local serve`` in a child process; returns once it prints its endpoint."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ahi_torch", "local", "serve", "--data-dir", str(data_dir), "--port", "0", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("AHI endpoint"), line + process.stdout.read()
    return process


def stop_subprocess(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
