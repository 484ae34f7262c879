"""The demo's whole pipeline at a small size: import, index, cold and warm epochs, manifest."""

from __future__ import annotations

import json
from pathlib import Path

from ahi_torch.config import load
from ahi_torch.demo import DemoOptions, run_demo

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


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


def test_shipped_configs_are_valid() -> None:
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert names == ["ct-volumes.yaml", "frames-classification.yaml", "local-demo.yaml"]
    views = {name: load(CONFIGS / name).view for name in names}
    assert views == {"ct-volumes.yaml": "volumes", "frames-classification.yaml": "frames", "local-demo.yaml": "frames"}
    assert load(CONFIGS / "frames-classification.yaml").labels.table.endswith("labels.csv")  # type: ignore[union-attr]
