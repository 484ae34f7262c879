"""The benchmark suite runs end to end at tiny sizes (no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke(tmp_path: Path) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path), "--no-readme"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = (tmp_path / "benchmarks.md").read_text()
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    for row in (
        "warm epoch / numpy memmap limit",
        "cold epoch / naive boto3 + pylibjpeg (WAN)",
        "decode-only bound",
        "OpenJPH / pylibjpeg-openjpeg",
        "worker RSS growth",
        "3D volumes",
        "index build",
        "local service GetImageFrame",
    ):
        assert row in table, row
    assert results["index"]["frames"] == 12 and results["volumes"]["count"] == 2
    assert set(results["cold"]) == {"lan", "wan", "decode_only"}
    assert "| ratio | measured | target | verdict |" in completed.stdout
