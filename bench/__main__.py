"""Benchmarks measured in one run: ``python -m bench [--quick] [--smoke]`` (also ``make bench``).

Builds a dataset on the local AHI (default 64 series x 64 slices of 512x512 int16 CT; ``--quick``
6 x 40; ``--smoke`` a tiny one for the test suite), then measures on the same frames with the same
DataLoader settings: decode backends, cold and warm epochs against the alternatives and bounds,
3D volumes, index build, worker memory, and the local service. Writes ``docs/benchmarks.md``
(ratios first, absolute numbers beside them) and ``docs/benchmarks.json``, prints the table and
refreshes the table in README.md between the ``bench:start``/``bench:end`` markers.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from ahi_torch.cache import FrameCache
from ahi_torch.codecs import decode_frame
from ahi_torch.datasets import FrameDataset, VolumeDataset
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI, ServiceSettings
from ahi_torch.local.faults import Faults, FaultSpec

from . import data
from .loaders import DecodeOnlyDataset, MemmapDataset, NaiveDataset, cpu_description, rss_bytes, worker_pids

ROOT = Path(__file__).resolve().parents[1]
#: Simulated network round trip on GetImageFrame: AHI seen from EC2 is tens of milliseconds away.
NETWORK_LATENCY = 0.02


def _epoch(dataset: Any, batch_size: int, workers: int, rss: list[dict[str, int]] | None = None) -> tuple[float, int]:
    """Seconds and items for one pass of a DataLoader (workers started inside the timing).

    With ``rss``, each worker's resident memory after the first batch and after the last one
    is appended to it.
    """
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, persistent_workers=False)
    started = time.perf_counter()
    items = 0
    iterator = iter(loader)
    first: dict[int, int] = {}
    for position, batch in enumerate(iterator):
        images = batch["image"] if isinstance(batch, dict) else batch
        items += len(images)
        if position == 0:
            first = {pid: rss_bytes(pid) for pid in worker_pids(iterator)}
        last = {pid: rss_bytes(pid) for pid in first}
    seconds = time.perf_counter() - started
    if rss is not None:
        rss.extend({"pid": pid, "start": start, "end": last.get(pid, start)} for pid, start in first.items())
    del iterator
    return seconds, items


def _rate(seconds: float, items: int) -> float:
    return items / seconds if seconds > 0 else 0.0


def _frames(index: FrameIndex) -> list[tuple[str, str]]:
    return list(zip(index.texts("image_set_id"), index.texts("frame_id"), strict=True))


def _encoded(ahi: LocalAHI, datastore_id: str, frames: list[tuple[str, str]]) -> list[bytes]:
    client = ahi.client()
    with ThreadPoolExecutor(8) as pool:
        return list(
            pool.map(
                lambda f: (
                    client.get_image_frame(
                        datastoreId=datastore_id, imageSetId=f[0], imageFrameInformation={"imageFrameId": f[1]}
                    ).data
                ),
                frames,
            )
        )


def measure_decode(encoded: list[bytes], workers: int) -> dict[str, float]:
    results = {}
    sample = encoded[: min(len(encoded), 300)]
    for backend in ("imagecodecs", "openjpeg"):

        def run(frame: bytes, name: str = backend) -> np.ndarray:
            return decode_frame(frame, prefer=name)

        started = time.perf_counter()
        for frame in sample:
            run(frame)
        results[f"{backend}_1"] = _rate(time.perf_counter() - started, len(sample))
        with ThreadPoolExecutor(workers) as pool:
            started = time.perf_counter()
            list(pool.map(run, sample))
            results[f"{backend}_{workers}"] = _rate(time.perf_counter() - started, len(sample))
    return results


def measure_service(ahi: LocalAHI, datastore_id: str, frames: list[tuple[str, str]], count: int) -> dict[str, float]:
    mi = ahi.boto3_client(max_pool_connections=16)
    chosen = (frames * (count // max(1, len(frames)) + 1))[:count]

    def get(frame: tuple[str, str]) -> int:
        response = mi.get_image_frame(
            datastoreId=datastore_id, imageSetId=frame[0], imageFrameInformation={"imageFrameId": frame[1]}
        )
        return len(response["imageFrameBlob"].read())

    results = {}
    for threads in (1, 8):
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            total = sum(pool.map(get, chosen))
        seconds = time.perf_counter() - started
        results[f"requests_per_s_{threads}"] = _rate(seconds, len(chosen))
        results[f"mb_per_s_{threads}"] = total / seconds / 1e6
    return results


def run(size: data.Size, workers: int, batch_size: int, work: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"size": size.__dict__, "workers": workers, "batch_size": batch_size}
    faults = Faults()
    with LocalAHI(work / "ahi", settings=ServiceSettings(transition_seconds=0.0), faults=faults) as ahi:
        dataset = data.build(ahi, size, work / "dicom")
        results["import"] = {
            "files": dataset.files,
            "write_s": dataset.write_seconds,
            "import_s": dataset.import_seconds,
        }
        client = ahi.client(max_pool_connections=32)

        started = time.perf_counter()
        index = build_index(client, dataset.datastore_id, progress=False, max_workers=8)
        results["index"] = {
            "image_sets": index.image_set_count,
            "frames": len(index),
            "seconds": time.perf_counter() - started,
            "bytes_per_frame": index.table.nbytes / len(index),
        }
        frames = _frames(index)
        encoded = _encoded(ahi, dataset.datastore_id, frames)
        results["decode"] = measure_decode(encoded, workers)
        results["service"] = measure_service(ahi, dataset.datastore_id, frames, size.frames_for_service)

        slope = float(index.column("rescale_slope")[0])
        intercept = float(index.column("rescale_intercept")[0])
        memmap = work / "frames.npy"
        np.save(memmap, np.stack([decode_frame(e) for e in encoded]))
        decode_only = _epoch(DecodeOnlyDataset(encoded), batch_size, workers)
        # Forked workers would inherit (and report in their RSS) the frames held for the bounds.
        del encoded
        gc.collect()

        cold: dict[str, Any] = {}
        for latency in (0.0, NETWORK_LATENCY):
            faults.specs["GetImageFrame"] = FaultSpec(latency=latency)
            label = "lan" if latency == 0 else "wan"
            naive = _epoch(NaiveDataset(ahi.endpoint_url, dataset.datastore_id, frames), batch_size, workers)
            cache_dir = work / f"cache-{label}"
            ours = _epoch(FrameDataset(index, client, cache=FrameCache(cache_dir)), batch_size, workers)
            cold[label] = {"latency_s": latency, "ahi_torch": _rate(*ours), "naive": _rate(*naive)}
        faults.specs.clear()
        cold["decode_only"] = _rate(*decode_only)
        results["cold"] = cold

        rss: list[dict[str, int]] = []
        warm_dataset = FrameDataset(index, client, cache=FrameCache(work / "cache-lan"))
        warm = _epoch(warm_dataset, batch_size, workers, rss)
        encoded_mode = FrameDataset(index, client, cache=FrameCache(work / "cache-encoded", mode="encoded"))
        _epoch(encoded_mode, batch_size, workers)
        warm_encoded = _epoch(encoded_mode, batch_size, workers)
        limit = _epoch(MemmapDataset(memmap, slope, intercept), batch_size, workers)
        results["warm"] = {
            "ahi_torch": _rate(*warm),
            "ahi_torch_encoded_cache": _rate(*warm_encoded),
            "memmap": _rate(*limit),
            "monai_persistent": None,
            "cache_bytes_decoded": _directory_bytes(work / "cache-lan"),
            "cache_bytes_encoded": _directory_bytes(work / "cache-encoded"),
        }
        results["rss"] = rss

        volumes_index = index.filter(
            np.isin(index.column("series_instance_uid"), np.unique(index.column("series_instance_uid"))[: size.volumes])
        )
        volume_dataset = VolumeDataset(volumes_index, client, cache=FrameCache(work / "cache-volumes"))
        cold_volumes = _epoch(volume_dataset, 1, workers)
        warm_volumes = _epoch(volume_dataset, 1, workers)
        results["volumes"] = {"count": len(volume_dataset), "cold": _rate(*cold_volumes), "warm": _rate(*warm_volumes)}
    return results


def _directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _versions() -> dict[str, str]:
    names = [
        "torch",
        "numpy",
        "imagecodecs",
        "pylibjpeg-openjpeg",
        "boto3",
        "pydicom",
        "diskcache",
        "pyarrow",
        "uvicorn",
    ]
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = version(name)
        except Exception:
            found[name] = "not installed"
    return found


def _row(name: str, ratio: float | None, target: float | None, detail: str, higher_is_better: bool = True) -> str:
    if ratio is None:
        return f"| {name} | - | - | - | {detail} |"
    verdict = (
        "-"
        if target is None
        else ("met" if (ratio >= target if higher_is_better else ratio <= target) else "**missed**")
    )
    goal = "-" if target is None else (f"≥ {target:g}" if higher_is_better else f"≤ {target:g}")
    return f"| {name} | {ratio:.2f} | {goal} | {verdict} | {detail} |"


def markdown(results: dict[str, Any]) -> str:
    size = results["size"]
    cold, warm, decode = results["cold"], results["warm"], results["decode"]
    workers = results["workers"]
    growth = max((r["end"] / r["start"] - 1 for r in results["rss"] if r["start"]), default=0.0)
    rss_detail = ", ".join(f"{r['start'] / 1e6:.0f}→{r['end'] / 1e6:.0f} MB" for r in results["rss"]) or "no workers"
    lines = [
        "# Benchmarks",
        "",
        f"Run `{results['command']}` on {results['machine']} ({results['date']}). "
        f"Dataset: {size['series']} series x {size['slices']} slices of {size['pixels']}x{size['pixels']} int16 "
        f"({results['index']['frames']} frames), DataLoader batch size {results['batch_size']}, "
        f"{workers} workers, fork. "
        f'"WAN" rows add {NETWORK_LATENCY * 1000:.0f} ms to every GetImageFrame (a network round trip to AHI); '
        '"LAN" rows talk to the local service directly. All numbers come from this one run.',
        "",
        "| ratio | measured | target | verdict | absolute numbers |",
        "|---|---|---|---|---|",
        _row(
            "warm epoch / numpy memmap limit",
            warm["ahi_torch"] / warm["memmap"],
            0.5,
            f"{warm['ahi_torch']:.0f} vs {warm['memmap']:.0f} frames/s",
        ),
        _row(
            "cold epoch / naive boto3 + pylibjpeg (WAN)",
            cold["wan"]["ahi_torch"] / cold["wan"]["naive"],
            3.0,
            f"{cold['wan']['ahi_torch']:.0f} vs {cold['wan']['naive']:.0f} frames/s",
        ),
        _row(
            "cold epoch / naive boto3 + pylibjpeg (LAN)",
            cold["lan"]["ahi_torch"] / cold["lan"]["naive"],
            None,
            f"{cold['lan']['ahi_torch']:.0f} vs {cold['lan']['naive']:.0f} frames/s",
        ),
        _row(
            "cold epoch (WAN) / decode-only bound",
            cold["wan"]["ahi_torch"] / cold["decode_only"],
            0.6,
            f"{cold['wan']['ahi_torch']:.0f} vs {cold['decode_only']:.0f} frames/s",
        ),
        _row(
            "cold epoch (LAN) / decode-only bound",
            cold["lan"]["ahi_torch"] / cold["decode_only"],
            0.6,
            f"{cold['lan']['ahi_torch']:.0f} vs {cold['decode_only']:.0f} frames/s",
        ),
        _row(
            "OpenJPH / pylibjpeg-openjpeg HTJ2K decode, 1 thread",
            decode["imagecodecs_1"] / decode["openjpeg_1"],
            1.8,
            f"{decode['imagecodecs_1']:.0f} vs {decode['openjpeg_1']:.0f} frames/s",
        ),
        _row(
            f"OpenJPH / pylibjpeg-openjpeg HTJ2K decode, {workers} threads",
            decode[f"imagecodecs_{workers}"] / decode[f"openjpeg_{workers}"],
            None,
            f"{decode[f'imagecodecs_{workers}']:.0f} vs {decode[f'openjpeg_{workers}']:.0f} frames/s",
        ),
        _row("worker RSS growth over an epoch", growth, 0.10, rss_detail, higher_is_better=False),
        _row(
            "warm epoch, encoded cache / decoded cache",
            warm["ahi_torch_encoded_cache"] / warm["ahi_torch"],
            None,
            f"{warm['ahi_torch_encoded_cache']:.0f} vs {warm['ahi_torch']:.0f} frames/s; "
            f"cache {warm['cache_bytes_encoded'] / 1e6:.0f} vs {warm['cache_bytes_decoded'] / 1e6:.0f} MB",
        ),
        _row("MONAI PersistentDataset", None, None, "skipped: MONAI is not installed"),
        "",
        "| measurement | value |",
        "|---|---|",
        f"| 3D volumes, cold / warm | {results['volumes']['cold']:.2f} / {results['volumes']['warm']:.2f} volumes/s "
        f"({results['volumes']['count']} volumes of {size['slices']} slices) |",
        f"| index build | {results['index']['seconds']:.2f} s for {results['index']['image_sets']} image sets "
        f"({results['index']['frames']} frames), {results['index']['bytes_per_frame']:.0f} bytes per frame in memory |",
        f"| import (StartDICOMImportJob) | {results['import']['files']} files "
        f"in {results['import']['import_s']:.1f} s |",
        f"| local service GetImageFrame, 1 thread | {results['service']['requests_per_s_1']:.0f} requests/s, "
        f"{results['service']['mb_per_s_1']:.0f} MB/s |",
        f"| local service GetImageFrame, 8 threads | {results['service']['requests_per_s_8']:.0f} requests/s, "
        f"{results['service']['mb_per_s_8']:.0f} MB/s |",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    if not readme.exists():
        return
    text = readme.read_text()
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    if start not in text or end not in text:
        return
    body = table.split("\n", 2)[2]  # drop the "# Benchmarks" heading
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    readme.write_text(f"{before}{start}\n{body.strip()}\n{end}{after}")


def main(argv: Iterable[str] | None = None, printer: Callable[[str], None] = print) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a smaller dataset (about 3 minutes on 2 cores)")
    group.add_argument("--smoke", action="store_true", help="tiny sizes, only to prove the suite runs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where benchmarks.md and .json go")
    parser.add_argument("--no-readme", action="store_true", help="do not refresh the table in README.md")
    args = parser.parse_args(list(argv) if argv is not None else None)
    size = data.SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    work = Path(tempfile.mkdtemp(prefix="ahi-bench-"))
    started = time.perf_counter()
    try:
        results = run(size, args.workers, args.batch_size, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.update(
        command="python -m bench" + (" --quick" if args.quick else " --smoke" if args.smoke else ""),
        machine=cpu_description(),
        date=time.strftime("%Y-%m-%d"),
        versions=_versions(),
        seconds=time.perf_counter() - started,
    )
    table = markdown(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "benchmarks.md").write_text(table)
    (args.out / "benchmarks.json").write_text(json.dumps(results, indent=2, default=str))
    if not args.no_readme:
        update_readme(ROOT / "README.md", table)
    printer(table)
    printer(f"(benchmark run took {results['seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
