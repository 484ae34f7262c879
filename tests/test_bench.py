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
    # Every ratio in the table is the quotient of the run's own numbers.
    measured = {
        cells[1].strip(): float(cells[2])
        for cells in (line.split("|") for line in table.splitlines())
        if len(cells) > 3 and cells[2].strip().replace(".", "", 1).isdigit()
    }
    cold, warm, decode = results["cold"], results["warm"], results["decode"]
    expected = {
        "warm epoch / numpy memmap limit": warm["ahi_torch"] / warm["memmap"],
        "cold epoch / naive boto3 + pylibjpeg (WAN)": cold["wan"]["ahi_torch"] / cold["wan"]["naive"],
        "cold epoch / naive boto3 + pylibjpeg (LAN)": cold["lan"]["ahi_torch"] / cold["lan"]["naive"],
        "cold epoch (WAN) / decode-only bound": cold["wan"]["ahi_torch"] / cold["decode_only"],
        "cold epoch (LAN) / decode-only bound": cold["lan"]["ahi_torch"] / cold["decode_only"],
        "OpenJPH / pylibjpeg-openjpeg HTJ2K decode, 1 thread": decode["imagecodecs_1"] / decode["openjpeg_1"],
    }
    for name, ratio in expected.items():
        assert measured[name] == round(ratio, 2), name
