"""Lightning DDP with a real 2-process Trainer: every sample once per epoch, reshuffled, resumable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ahi_torch.errors import ConfigError
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import SeriesSpec, write_series
from ahi_torch.samplers import ShuffleSampler

pytest.importorskip("lightning")

JOB = Path(__file__).with_name("lightning_job.py")
SAMPLES = 16


@pytest.fixture(scope="module")
def config(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config over 16 frames (two 8-slice series) of a fresh data store."""
    root = tmp_path_factory.mktemp("lightning")
    for patient in range(2):
        spec = SeriesSpec(patient_id=f"LIT-{patient}", series_key=f"lit{patient}", slices=8, rows=16, columns=16)
        write_series(root / "dicom" / spec.series_key, spec)
    result = ahi.import_dicom(root / "dicom")
    assert result.status == "COMPLETED", result.message
    cfg = {
        "connection": {"endpoint_url": ahi.endpoint_url},
        "datastore": {"id": result.datastore_id},
        "index": {"path": str(root / "index.parquet")},
        "cache": {"dir": str(root / "cache")},
        "loader": {"batch_size": 2, "num_workers": 1, "seed": 3, "multiprocessing_context": "fork"},
    }
    path = root / "lightning.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_job(config: Path, out: Path, mode: str, checkpoint: Path | None = None, devices: int = 2) -> list[dict]:
    command = [sys.executable, str(JOB), str(config), str(out), mode, *([str(checkpoint)] if checkpoint else [])]
    env = {**os.environ, "AHI_JOB_DEVICES": str(devices)}
    done = subprocess.run(
        command, check=False, capture_output=True, text=True, timeout=300, cwd=JOB.parent.parent, env=env
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (out / f"done-{mode}").exists()
    return [json.loads(line) for path in sorted(out.glob("rank*.jsonl")) for line in path.read_text().splitlines()]


def seen(records: list[dict], epoch: int) -> list[int]:
    return sorted(i for r in records if r["epoch"] == epoch for i in r["indices"])


def order(records: list[dict], epoch: int, rank: int) -> list[int]:
    return [i for r in records if r["epoch"] == epoch and r["rank"] == rank for i in r["indices"]]


@pytest.mark.slow
def test_ddp_sees_every_sample_once_per_epoch_and_reshuffles(config: Path, tmp_path: Path) -> None:
    records = run_job(config, tmp_path / "full", "full")
    assert {r["world"] for r in records} == {2} and {r["rank"] for r in records} == {0, 1}
    assert {r["sampler"] for r in records} == {"ShuffleSampler"}, "Lightning must not wrap the sampler"
    for epoch in (0, 1):
        assert seen(records, epoch) == list(range(SAMPLES)), f"epoch {epoch}"
    assert order(records, 0, 0) != order(records, 1, 0), "each epoch reshuffles"
    # The ranks' shares are exactly the sampler's, computed without any process group.
    for rank in (0, 1):
        sampler = ShuffleSampler(SAMPLES, seed=3, num_replicas=2, rank=rank)
        sampler.set_epoch(1)
        assert order(records, 1, rank) == list(sampler)


@pytest.mark.slow
def test_ddp_resumes_exactly_from_a_mid_epoch_checkpoint(config: Path, tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    first = run_job(config, tmp_path / "first", "full", checkpoints)
    assert (checkpoints / "mid.ckpt").exists(), "ModelCheckpoint saved after step 6, in the middle of epoch 1"
    before = [r for r in first if r["step"] < 6]
    assert seen(before, 0) == list(range(SAMPLES)) and 0 < len(seen(before, 1)) < SAMPLES
    second = run_job(config, tmp_path / "second", "resume", checkpoints)
    assert seen(second, 0) == [], "the resumed run does not repeat epoch 0"
    assert min(r["step"] for r in second) == 6
    assert sorted(seen(before, 1) + seen(second, 1)) == list(range(SAMPLES)), "epoch 1 is completed exactly once"
    for rank in (0, 1):
        resumed = order(before, 1, rank) + order(second, 1, rank)
        assert resumed == order(first, 1, rank), "the resumed epoch keeps the uninterrupted order"


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 3])
def test_a_checkpoint_resumes_on_another_number_of_gpus_and_workers(config: Path, tmp_path: Path, devices: int) -> None:
    """Issue 22.5 through Lightning: saved at 2 ranks with 1 worker, resumed at 1 or 3 ranks with 0 workers."""
    checkpoints = tmp_path / "checkpoints"
    first = run_job(config, tmp_path / "first", "full", checkpoints)
    before = [r for r in first if r["step"] < 6]
    elsewhere = tmp_path / "elsewhere.yaml"
    cfg = yaml.safe_load(config.read_text())
    cfg["loader"]["num_workers"] = 0
    elsewhere.write_text(yaml.safe_dump(cfg))
    second = run_job(elsewhere, tmp_path / "second", "resume", checkpoints, devices=devices)
    assert {r["world"] for r in second} == {devices}
    done, rest = seen(before, 1), seen(second, 1)
    assert not set(done) & set(rest), "nothing of epoch 1 is seen twice"
    assert set(done) | set(rest) == set(range(SAMPLES)), "every sample of epoch 1 is seen"
    assert len(rest) - len(set(rest)) < devices, "only the new world's padding repeats"


def test_data_module_from_an_index(ahi: LocalAHI, config: Path) -> None:
    from ahi_torch.index import build_index
    from ahi_torch.integrations.lightning import AHIDataModule

    datastore_id = yaml.safe_load(config.read_text())["datastore"]["id"]
    index = build_index(ahi.client(), datastore_id, progress=False)
    data = AHIDataModule.from_index(
        index, ahi.client(), fractions={"train": 0.5, "val": 0.5}, batch_size=4, num_workers=0, split_seed=5
    )
    train, val = data.train_dataloader(), data.val_dataloader()
    assert isinstance(train.sampler, ShuffleSampler) and train.sampler.shuffle
    assert isinstance(val.sampler, ShuffleSampler) and not val.sampler.shuffle, "validation reads in index order"
    served = [i for batch in train for i in batch["meta"]["patient_id"]] + [
        i for batch in val for i in batch["meta"]["patient_id"]
    ]
    assert len(served) == SAMPLES and set(served) == {"LIT-0", "LIT-1"}
    train_patients = {i for batch in train for i in batch["meta"]["patient_id"]}
    val_patients = {i for batch in val for i in batch["meta"]["patient_id"]}
    assert len(train_patients) == len(val_patients) == 1 and not train_patients & val_patients


def test_data_module_from_a_config_with_splits(config: Path, tmp_path: Path) -> None:
    from ahi_torch.integrations.lightning import AHIDataModule

    cfg = yaml.safe_load(config.read_text())
    cfg["split"] = {"fractions": {"train": 0.5, "val": 0.5}, "use": "train", "seed": 5}  # one patient each
    cfg["index"]["path"] = str(tmp_path / "index.parquet")
    cfg["loader"]["num_workers"] = 0
    path = tmp_path / "split.yaml"
    path.write_text(yaml.safe_dump(cfg))
    data = AHIDataModule.from_config(path)
    assert data.splits == {"train": "train", "val": "val"}
    data.prepare_data()
    data.setup("fit")
    train = {p for batch in data.train_dataloader() for p in batch["meta"]["patient_id"]}
    val = {p for batch in data.val_dataloader() for p in batch["meta"]["patient_id"]}
    assert train and val and not train & val and train | val == {"LIT-0", "LIT-1"}
    with pytest.raises(ConfigError, match=r"split 'test' for test is not in split\.fractions"):
        AHIDataModule.from_config(path, test="test")


@pytest.mark.parametrize("sampler", ["weighted", "class_balanced", "locality", "node_pinned", "shuffle", "sequential"])
def test_data_module_trains_with_the_configured_sampler(config: Path, tmp_path: Path, sampler: str) -> None:
    """Issue 22.4: from_config reduced loader.sampler to shuffle on/off; now it builds what build_dataloader does."""
    from ahi_torch.config import build_dataloader, build_dataset, load
    from ahi_torch.integrations.lightning import AHIDataModule

    cfg = yaml.safe_load(config.read_text())
    cfg["loader"].update(sampler=sampler, num_workers=0)
    cfg["labels"] = {"column": "patient_id"}
    path = tmp_path / "sampler.yaml"
    path.write_text(yaml.safe_dump(cfg))
    data = AHIDataModule.from_config(path)
    data.prepare_data()
    data.setup("fit")
    train = data.train_dataloader()
    expected = build_dataloader(load(path), build_dataset(load(path), progress=False))
    assert type(train.sampler) is type(expected.sampler)
    for epoch in (0, 1):
        train.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        expected.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
        assert list(train.sampler) == list(expected.sampler), "the same order as build_dataloader's"
    assert train.batch_size == expected.batch_size and train.drop_last == expected.drop_last


def test_data_module_from_fractions_without_use(config: Path, tmp_path: Path) -> None:
    """configs/local-demo.yaml has fractions and no split.use: train is the split named train."""
    from ahi_torch.integrations.lightning import AHIDataModule

    cfg = yaml.safe_load(config.read_text())
    cfg["split"] = {"fractions": {"train": 0.5, "val": 0.5}, "seed": 5}
    cfg["loader"]["num_workers"] = 0
    path = tmp_path / "fractions.yaml"
    path.write_text(yaml.safe_dump(cfg))
    data = AHIDataModule.from_config(path)
    assert data.splits == {"train": "train", "val": "val"}
    data.setup("fit")
    train = {p for batch in data.train_dataloader() for p in batch["meta"]["patient_id"]}
    val = {p for batch in data.val_dataloader() for p in batch["meta"]["patient_id"]}
    assert train and val and not train & val
    assert data.val_dataloader().sampler.shuffle is False, "validation never shuffles"  # type: ignore[attr-defined]
    cfg["split"] = {"fractions": {"a": 0.5, "b": 0.5}}
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="no split named train"):
        AHIDataModule.from_config(path)
