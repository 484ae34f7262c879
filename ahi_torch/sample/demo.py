"""The end-to-end demo: local AHI → DICOM import → index → DataLoader → a short training run.

``ahi-torch demo`` (and ``make demo``) runs :func:`run_demo` on a fresh machine with no AWS
account: it starts the local AHI with an embedded S3, writes a labelled synthetic CT cohort
(a bright nodule in odd-numbered patients) plus real pydicom sample files, imports them with
StartDICOMImportJob, indexes the data store, and trains a small CNN for a few epochs on a
multi-worker DataLoader, first with a cold cache and then warm, reporting what it measured.
"""

from __future__ import annotations

import csv
import dataclasses
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import build_dataloader, build_dataset, config_hash, from_dict, write_manifest
from ..config.schema import Config
from ..errors import ConfigError

#: Marks a directory as a demo's output; it lists what the demo made there, the only entries a
#: later demo run removes. A non-empty directory without it is refused: it may hold a user's files.
MARKER = ".ahi-torch-demo"
#: What a demo run writes into its output directory.
OUTPUTS = ("dicom", "labels.csv", "index.parquet", "cache", "manifest.json")

#: Real files from the pydicom wheel (no download): CT, MR, RGB ultrasound, JPEG baseline.
REAL_FILES = ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "SC_rgb_jpeg_dcmtk.dcm")


@dataclass(frozen=True)
class DemoOptions:
    patients: int = 16
    slices: int = 32
    size: int = 64
    epochs: int = 3
    batch_size: int = 16
    workers: int = 2
    output_dir: str = "runs/demo"
    real_files: bool = True
    seed: int = 0


@dataclass
class EpochReport:
    epoch: int
    frames: int
    seconds: float
    frame_requests: int
    loss: float

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    @property
    def cache_hit_rate(self) -> float:
        return max(0.0, 1.0 - self.frame_requests / self.frames) if self.frames else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "epoch": self.epoch,
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "frames_per_second": round(self.frames_per_second, 1),
            "cache_hit_rate": round(self.cache_hit_rate, 3),
            "loss": round(self.loss, 4),
        }


@dataclass
class DemoReport:
    image_sets: int = 0
    indexed_frames: int = 0
    imported_files: int = 0
    failed_files: int = 0
    train_frames: int = 0
    val_frames: int = 0
    epochs: list[EpochReport] = field(default_factory=list)
    val_accuracy: float = 0.0
    config_hash: str = ""
    index_version: str = ""
    manifest: str = ""


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head: enough to find a nodule in a 64x64 slice."""

    def __init__(self, classes: int = 2) -> None:
        super().__init__()

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, padding=1), nn.BatchNorm2d(outputs), nn.ReLU(), nn.MaxPool2d(2)
            )

        self.features = nn.Sequential(block(1, 8), block(8, 16), block(16, 32), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(32, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images).flatten(1))


def demo_config(output: Path, endpoint_url: str, datastore_id: str, options: DemoOptions) -> Config:
    """The configuration the demo trains with (mirrors ``configs/local-demo.yaml``)."""
    return from_dict(
        Config,
        {
            "name": "demo",
            "connection": {"endpoint_url": endpoint_url, "access_key_id": "local", "secret_access_key": "local"},
            "datastore": {"id": datastore_id},
            "search": {"filters": [{"is_primary": True}], "modalities": ["CT"]},
            "index": {"path": str(output / "index.parquet")},
            "view": "frames",
            "labels": {
                "table": str(output / "labels.csv"),
                "join_on": "series_instance_uid",
                "key": "SeriesInstanceUID",
                "value": "nodule",
                "unlabeled": "drop",
            },
            "split": {
                "fractions": {"train": 0.75, "val": 0.25},
                "by": "patient_id",
                "seed": options.seed,
                "use": "train",
            },
            "intensity": {"window": [-400.0, 1500.0]},
            "cache": {"dir": str(output / "cache"), "size_gb": 2.0, "mode": "decoded"},
            "loader": {
                "batch_size": options.batch_size,
                "num_workers": options.workers,
                "sampler": "shuffle",
                "seed": options.seed,
                "persistent_workers": False,
            },
            "output_dir": str(output),
        },
    )


def write_inputs(output: Path, options: DemoOptions) -> Path:
    """The demo's inputs under ``output``: ``dicom/`` (synthetic cohort, pydicom samples) and ``labels.csv``."""
    from .synthetic import demo_cohort

    dicom = output / "dicom"
    cohort = demo_cohort(dicom / "synthetic", patients=options.patients, slices=options.slices, size=options.size)
    with (output / "labels.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["SeriesInstanceUID", "PatientID", "nodule"])
        for spec, _ in cohort:
            writer.writerow([spec.series_uid, spec.patient_id, int(spec.nodule)])
    if options.real_files:
        from pydicom.data import get_testdata_file

        (dicom / "pydicom").mkdir(parents=True, exist_ok=True)
        for name in REAL_FILES:
            path = get_testdata_file(name)
            if path:
                shutil.copy(path, dicom / "pydicom" / name)
    return dicom


def prepare_output(output: Path) -> None:
    """Make ``output`` ready for a run without touching anything the demo did not create.

    An empty or missing directory is used as it is; a previous demo's output (it has the
    :data:`MARKER` file) loses only the entries the marker lists; any other non-empty directory is
    refused with a :class:`~ahi_torch.errors.ConfigError`.
    """
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output-dir {output} is a file, not a directory")
    entries = sorted(p.name for p in output.iterdir()) if output.exists() else []
    if entries:
        marker = output / MARKER
        if not marker.exists():
            raise ConfigError(
                f"--output-dir {output} is not empty and was not made by ahi-torch demo "
                f"(it holds {', '.join(entries[:3])}{'...' if len(entries) > 3 else ''}); choose an empty directory"
            )
        for name in marker.read_text().split():
            if name in OUTPUTS:  # a marker cannot make the demo delete anything else
                target = output / name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                elif target.exists() or target.is_symlink():
                    target.unlink()
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("\n".join(OUTPUTS) + "\n")


def run_demo(options: DemoOptions | None = None, log: Callable[[str], None] = print) -> DemoReport:
    """Run the whole path and return what it measured (the CLI prints it)."""
    from ..local import LocalAHI

    options = options or DemoOptions()
    torch.manual_seed(options.seed)
    output = Path(options.output_dir)
    prepare_output(output)
    report = DemoReport()
    dicom = write_inputs(output, options)
    log(
        f"wrote {options.patients} synthetic CT series ({options.slices} slices of {options.size}x{options.size})"
        + (f" and {len(REAL_FILES)} pydicom sample files" if options.real_files else "")
    )
    with LocalAHI() as ahi:
        log(f"local AHI at {ahi.endpoint_url}, S3 at {ahi.s3_endpoint_url}")
        datastore_id = _import(ahi, dicom, report, log)
        cfg = demo_config(output, ahi.endpoint_url, datastore_id, options)
        train, val = _datasets(cfg, report, log)
        loader = build_dataloader(cfg, train)
        model = SmallCNN(len(train.classes or [0, 1]))
        optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
        for epoch in range(options.epochs):
            report.epochs.append(_train_epoch(model, optimiser, loader, epoch, ahi, log))
        report.val_accuracy = _accuracy(model, val, options)
        log(f"validation accuracy {report.val_accuracy:.0%} on {len(val)} frames of held-out patients")
        details = {**_as_dict(report), "epochs": [e.summary() for e in report.epochs]}
        manifest = write_manifest(cfg, train, output, extra={"report": details})
        report.manifest = str(manifest)
        log(f"manifest {manifest} (config {report.config_hash}, index {report.index_version[:12]})")
    return report


def _import(ahi: Any, dicom: Path, report: DemoReport, log: Callable[[str], None]) -> str:
    """Import the demo's files into a new data store; returns its ID."""
    datastore_id: str = ahi.create_datastore("ahi-torch-demo")
    started = time.perf_counter()
    result = ahi.import_dicom(dicom, datastore_id)
    summary = result.manifest.get("jobSummary", {})
    report.imported_files = int(summary.get("numberOfImportedFiles", 0))
    report.failed_files = len(result.failures)
    log(
        f"import job {result.job_id}: {report.imported_files} files into "
        f"{summary.get('numberOfGeneratedImageSets', 0)} "
        f"image sets in {time.perf_counter() - started:.1f} s ({report.failed_files} failed)"
    )
    for failure in result.failures:
        log(f"  not imported: {failure['inputFile']}: {failure['exception']['message']}")
    return datastore_id


def _datasets(cfg: Config, report: DemoReport, log: Callable[[str], None]) -> tuple[Any, Any]:
    """The config's train split and its val split, counted into ``report``."""
    train = build_dataset(cfg, progress=False)
    val_cfg = from_dict(Config, {**_as_dict(cfg), "split": {**_as_dict(cfg)["split"], "use": "val"}})
    val = build_dataset(val_cfg, progress=False)
    report.image_sets = len(set(train.group_keys().tolist()) | set(val.group_keys().tolist()))
    report.indexed_frames = len(train) + len(val)
    report.train_frames, report.val_frames = len(train), len(val)
    report.config_hash, report.index_version = config_hash(cfg), train.index_version
    log(
        f"index: {report.indexed_frames} labelled CT frames from {report.image_sets} image sets; "
        f"train {len(train)}, val {len(val)}"
    )
    return train, val


def _train_epoch(
    model: nn.Module, optimiser: Any, loader: Any, epoch: int, ahi: Any, log: Callable[[str], None]
) -> EpochReport:
    """One epoch of training, with the GetImageFrame requests it cost."""
    sampler = loader.sampler
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    before = ahi.request_counts().get("GetImageFrame", 0)
    started = time.perf_counter()
    total_loss, frames = 0.0, 0
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for batch in loader:
        optimiser.zero_grad()
        loss = loss_fn(model(batch["image"]), batch["label"])
        loss.backward()
        optimiser.step()
        total_loss += loss.item() * len(batch["label"])
        frames += len(batch["label"])
    seconds = time.perf_counter() - started
    requests = ahi.request_counts().get("GetImageFrame", 0) - before
    report = EpochReport(epoch + 1, frames, seconds, requests, total_loss / max(1, frames))
    state = "cold" if epoch == 0 else "warm"
    log(
        f"epoch {epoch + 1} ({state} cache): {frames} frames in {seconds:.1f} s = "
        f"{report.frames_per_second:.0f} "
        f"frames/s, cache hit rate {report.cache_hit_rate:.0%}, loss {report.loss:.3f}"
    )
    return report


def _accuracy(model: nn.Module, dataset: Any, options: DemoOptions) -> float:
    if len(dataset) == 0:
        return 0.0
    loader = torch.utils.data.DataLoader(dataset, batch_size=options.batch_size, num_workers=0)
    model.eval()
    correct = 0
    with torch.no_grad():
        for batch in loader:
            correct += int((model(batch["image"]).argmax(1) == batch["label"]).sum())
    return correct / len(dataset)


def _as_dict(value: Any) -> Any:
    return dataclasses.asdict(value)
