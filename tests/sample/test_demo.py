"""The demo's whole pipeline at a small size: import, index, cold and warm epochs, manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ahi_torch.cli.main import main
from ahi_torch.config import load
from ahi_torch.errors import ConfigError
from ahi_torch.sample.demo import DemoOptions, prepare_output, run_demo

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_demo_pipeline(tmp_path: Path) -> None:
    lines: list[str] = []
    report = run_demo(
        DemoOptions(
            patients=6, slices=6, size=32, epochs=2, batch_size=8, workers=2, output_dir=str(tmp_path / "demo")
        ),
        log=lines.append,
    )
    assert report.imported_files == 6 * 6 + 4 and report.failed_files == 0
    assert report.image_sets == 6 and report.indexed_frames == 36
    assert report.train_frames > 0 and report.train_frames + report.val_frames == 36
    cold, warm = report.epochs
    assert cold.frames == warm.frames == report.train_frames
    assert cold.cache_hit_rate == 0.0 and cold.frame_requests == report.train_frames
    assert warm.cache_hit_rate == 1.0 and warm.frame_requests == 0, "the second epoch is served by the cache"
    manifest = json.loads(Path(report.manifest).read_text())
    assert manifest["config_hash"] == report.config_hash and manifest["index_version"] == report.index_version
    assert manifest["report"]["epochs"][1]["cache_hit_rate"] == 1.0
    assert any(line.startswith("epoch 2 (warm cache)") for line in lines)

    # A second run in the same directory replaces the demo's own outputs and nothing else.
    keep = tmp_path / "demo" / "my-notes.txt"
    keep.write_text("a user's file")
    again = run_demo(
        DemoOptions(patients=4, slices=4, size=16, epochs=1, batch_size=8, workers=0, output_dir=str(tmp_path / "demo"))
    )
    assert again.indexed_frames == 16 and keep.read_text() == "a user's file"


def test_demo_refuses_a_directory_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    assert main(["demo", "--output-dir", str(target), "--patients", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not empty and was not made by ahi-torch demo" in err
    assert (target / "thesis.tex").read_text() == "years of work"
    with pytest.raises(ConfigError, match="is a file"):
        prepare_output(target / "thesis.tex")


def test_shipped_configs_are_valid() -> None:
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == ["ct-volumes.yaml", "frames-classification.yaml", "local-demo.yaml"]
    views = {name: load(CONFIGS / name).view for name in names}
    assert views == {"ct-volumes.yaml": "volumes", "frames-classification.yaml": "frames", "local-demo.yaml": "frames"}
    assert load(CONFIGS / "frames-classification.yaml").labels.table.endswith("labels.csv")  # type: ignore[union-attr]
