"""The benchmark suite runs end to end at tiny sizes (no timing is asserted here)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bench ARGS --no-readme``, which must succeed."""
    completed = subprocess.run(
        [sys.executable, "-m", "bench", *args, "--no-readme"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_bench_smoke(tmp_path: Path) -> None:
    completed = _bench("--smoke", "--out", str(tmp_path))
    table = (tmp_path / "benchmarks.md").read_text()
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    for row in (
        "warm epoch / numpy memmap limit",
        "cold epoch / naive boto3 + pylibjpeg (WAN)",
        "decode-only bound",
        "cold client CPU per frame, decoded cache / decode-only",
        "| FrameDataset, decoded cache, cold |",
        "signed urllib3 POST + the same decode",
        "reduce=2 progressive read / full download",
        "import files/s / HTJ2K encode bound",
        "import files/s / examine bound",
        "OpenJPH / pylibjpeg-openjpeg",
        "worker RSS growth",
        "3D volumes",
        "index build",
        "local service GetImageFrame",
        "index resident per frame, whole node",
        "worker private memory growth over an epoch of the index",
        "cold client CPU per frame, no cache / decode-only",
        "warm client CPU per frame, decoded cache / numpy memmap read as a dataset",
        "warm client CPU per frame, encoded cache / decode-only",
        "signing CPU per request, ahi_torch / botocore SigV4Auth",
        "decoded cache bytes on disk / payload bytes it holds",
        "| stage: SigV4 signature by ahi_torch's FrameSigner (the same bytes) |",
        "| stage: unsigned urllib3 POST, body read, no decode |",
        "| stage: FrameCache.get_frame, warm |",
        "Where the time goes",
        "| cold, no cache, 1 fetch thread |",
        "| warm, decoded cache |",
        "| stage: per-item assembly (refs, geometry, meta, labels, tensor) a batch at a time |",
        "whole-slide patches / naive boto3 loop, patches/s (uncached)",
        "whole-slide patches, warm frame cache / naive boto3 loop",
    ):
        assert row in table, row
    assert 1.0 <= results["patches"]["tiles_per_patch"] <= 4.0, "a 256² patch on 256² tiles covers one to four"
    assert results["index"]["frames"] == 12 and results["volumes"]["count"] == 2
    before, after = results["import"]["examine_per_s_before_after"]  # the bound brackets the job
    assert before > 0 and after > 0 and results["import"]["examine_per_s_1_process"] == (before + after) / 2
    assert f"right before the job and {after:.0f} right after it" in table
    assert set(results["cold"]) == {"lan", "wan", "decode_only"}
    assert "| ratio | measured (range) | target | verdict |" in completed.stdout
    # Every ratio in the table is the median of the run's own per-run quotients.
    measured = {
        cells[1].strip(): float(cells[2].split()[0])
        for cells in (line.split("|") for line in table.splitlines())
        if len(cells) > 3 and cells[2].strip().split(" ")[0].replace(".", "", 1).isdigit()
    }
    cold, warm, decode = results["cold"], results["warm"], results["decode"]

    def median_ratio(a: list[float], b: list[float]) -> float:
        return round(statistics.median(x / y for x, y in zip(a, b, strict=True)), 2)

    expected = {
        "warm epoch / numpy memmap limit": median_ratio(warm["ahi_torch"], warm["memmap"]),
        "cold epoch / naive boto3 + pylibjpeg (WAN)": median_ratio(cold["wan"]["ahi_torch"], cold["wan"]["naive"]),
        "cold epoch / naive boto3 + pylibjpeg (LAN)": median_ratio(cold["lan"]["ahi_torch"], cold["lan"]["naive"]),
        "cold epoch / tuned naive, 8 requests in flight per worker (WAN)": median_ratio(
            cold["wan"]["ahi_torch"], cold["wan"]["tuned_naive"]
        ),
        "cold epoch (WAN) / decode-only bound": median_ratio(cold["wan"]["ahi_torch"], cold["decode_only"]),
        "cold epoch (LAN) / decode-only bound": median_ratio(cold["lan"]["ahi_torch"], cold["decode_only"]),
        "OpenJPH / pylibjpeg-openjpeg HTJ2K decode, 1 thread": round(decode["imagecodecs_1"] / decode["openjpeg_1"], 2),
    }
    cpu = results["cpu"]["runs"]
    expected["warm client CPU per frame, decoded cache / numpy memmap read as a dataset"] = median_ratio(
        cpu["ahi_torch_decoded_warm"], cpu["memmap_dataset"]
    )
    expected["signing CPU per request, ahi_torch / botocore SigV4Auth"] = median_ratio(
        cpu["sign_ahi_torch"], cpu["sign_botocore"]
    )
    scale = results["index_scale"]
    node_row = next(name for name in measured if name.startswith("index resident per frame"))
    expected[node_row] = round(scale["node_bytes"] / scale["frames"], 2)
    assert scale["frames"] == 3000 and len(scale["workers_memory"]) == 2
    assert scale["node_bytes"] >= scale["table_bytes"] > 0
    for name, ratio in expected.items():
        assert measured[name] == ratio, name
    assert warm["hit_rate"] == 1.0, "the warm epochs are served by the cache alone (the bench checks it too)"
    assert results["start_method"] in ("fork", "spawn", "forkserver") and results["commit"] != "unknown"
    # A saved run renders to the same tables without running again.
    again = tmp_path / "again"
    _bench("--render", str(tmp_path / "benchmarks.json"), "--out", str(again))
    assert (again / "benchmarks.md").read_text() == table


def test_verdicts_need_every_run_to_agree() -> None:
    from bench.__main__ import ratios, verdict

    assert ratios([10.0, 12.0], [5.0, 4.0]) == [2.0, 3.0]
    assert verdict([3.1, 3.4, 3.2], 3.0) == "met"
    assert verdict([2.1, 2.9, 2.5], 3.0) == "**missed**"
    assert verdict([2.9, 3.2, 3.0], 3.0) == "within the spread"
    assert verdict([0.02, 0.05], 0.1, higher_is_better=False) == "met"
    assert verdict([0.5], None) == "-"
