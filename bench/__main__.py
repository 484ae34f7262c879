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
import functools
import gc
import json
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import subprocess
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
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, build_index

from . import data, index_scale
from .cpu import measure_cpu, measure_progressive
from .loaders import (
    DecodeOnlyDataset,
    MemmapDataset,
    NaiveDataset,
    TunedNaiveDataset,
    cpu_description,
    rss_bytes,
    worker_pids,
)
from .patches import measure_patches
from .service import ServiceProcess

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


def _encoded(client: Any, datastore_id: str, frames: list[tuple[str, str]]) -> list[bytes]:
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


def measure_encode(encoded: list[bytes]) -> float:
    """HTJ2K encodes per second on one thread (as the import writes them: reversible, TLM, tile-part per level)."""
    import imagecodecs

    sample = [decode_frame(frame) for frame in encoded[: min(len(encoded), 100)]]
    started = time.perf_counter()
    for pixels in sample:
        imagecodecs.htj2k_encode(pixels, reversible=True, tlm=True, tilepart=1)
    return _rate(time.perf_counter() - started, len(sample))


def measure_examine(root: Path) -> float:
    """Files per second one process examines as an import does: parse, encode, verify, level checksums.

    The pool's per-file work (:func:`ahi_torch.local.imports.examine.examine`, one file at a time as in
    a pool worker), without S3, IPC, frame files or SQLite: the import's own CPU bound.
    """
    from ahi_torch.local.imports import transcode
    from ahi_torch.local.imports.examine import examine

    files = [path.read_bytes() for path in sorted(root.rglob("*.dcm"))[:150]]
    shared, transcode.CODEC_SHARED_BY_THREADS = transcode.CODEC_SHARED_BY_THREADS, False  # as in a pool worker
    try:
        started = time.perf_counter()
        for data in files:
            examine(data, "HTJ2K")
        return _rate(time.perf_counter() - started, len(files))
    finally:
        transcode.CODEC_SHARED_BY_THREADS = shared


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


def measure_service(
    service: ServiceProcess, datastore_id: str, frames: list[tuple[str, str]], count: int
) -> dict[str, float]:
    mi = service.boto3("medical-imaging", max_pool_connections=16)
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


def _runs(make: Callable[[], Any], batch_size: int, workers: int, repeats: int) -> list[float]:
    """Items per second of ``repeats`` epochs, each over a dataset ``make()`` returns."""
    return [_rate(*_epoch(make(), batch_size, workers)) for _ in range(repeats)]


def _cold_frames(index: FrameIndex, client: Any, work: Path, label: str) -> Callable[[], FrameDataset]:
    """A maker of ahi_torch datasets whose every epoch starts with a fresh, empty cache."""
    made = iter(range(1_000_000))

    def make() -> FrameDataset:
        return FrameDataset(index, FrameFetcher(client, cache=FrameCache(work / f"cold-{label}-{next(made)}")))

    return make


#: The whole-slide benchmark per size: level-0 width of the slide (height 3/4 of it) and random patches read.
PATCH_SLIDES = {"full": (4096, 256), "quick": (2048, 128), "smoke": (512, 8)}


def run(size: data.Size, workers: int, batch_size: int, work: Path, repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {
        "size": size.__dict__,
        "workers": workers,
        "batch_size": batch_size,
        "repeats": repeats,
        "start_method": mp.get_start_method(),
    }
    service = ServiceProcess(work / "ahi").start()
    try:
        dataset = data.build(service, size, work / "dicom", measure=measure_examine)
        results["import"] = {
            "files": dataset.files,
            "write_s": dataset.write_seconds,
            "import_s": dataset.import_seconds,
            "upload_s": dataset.upload_seconds,
            "job_s": dataset.job_seconds,
            "job_cpu_s": dataset.job_cpu_seconds,
        }
        client = service.client(max_pool_connections=32)
        started = time.perf_counter()
        index = build_index(client, dataset.datastore_id, progress=False, max_workers=8)
        results["index"] = {
            "image_sets": index.image_set_count,
            "frames": len(index),
            "seconds": time.perf_counter() - started,
            "bytes_per_frame": index.table.nbytes / len(index),
        }
        frames = _frames(index)
        encoded = _encoded(client, dataset.datastore_id, frames)
        results["decode"] = measure_decode(encoded, workers)
        results["import"]["encode_per_s_1_thread"] = measure_encode(encoded)
        before, after = dataset.measured_beside_job
        results["import"]["examine_per_s_1_process"] = (before + after) / 2
        results["import"]["examine_per_s_before_after"] = [before, after]
        results["import"]["cores"] = os.cpu_count() or 1
        results["service"] = measure_service(service, dataset.datastore_id, frames, size.frames_for_service)
        results["cpu"] = measure_cpu(
            service.endpoint_url, client, dataset.datastore_id, index, encoded, work, max(repeats, 3)
        )
        results["progressive"] = measure_progressive(client, index, repeats)
        side, count = PATCH_SLIDES[size.name]
        results["patches"] = measure_patches(service, work, count, repeats, side)

        slope = float(index.column("rescale_slope")[0])
        intercept = float(index.column("rescale_intercept")[0])
        memmap = work / "frames.npy"
        np.save(memmap, np.stack([decode_frame(e) for e in encoded]))
        decode_only = _runs(functools.partial(DecodeOnlyDataset, encoded), batch_size, workers, repeats)
        # Forked workers would inherit (and report in their RSS) the frames held for the bounds.
        del encoded
        gc.collect()

        cold: dict[str, Any] = {"decode_only": decode_only}
        rss: list[dict[str, int]] = []
        for label, faults in (("lan", None), ("wan", f"GetImageFrame:latency={NETWORK_LATENCY}")):
            service.restart(faults)
            client = service.client(max_pool_connections=32)
            naive = functools.partial(NaiveDataset, service.endpoint_url, dataset.datastore_id, frames)
            tuned = functools.partial(TunedNaiveDataset, service.endpoint_url, dataset.datastore_id, frames)
            cold[label] = {
                "latency_s": 0.0 if faults is None else NETWORK_LATENCY,
                "naive": _runs(naive, batch_size, workers, repeats),
                "tuned_naive": _runs(tuned, batch_size, workers, repeats),
                "ahi_torch": _runs(_cold_frames(index, client, work, label), batch_size, workers, repeats),
            }
            if label == "lan":  # worker memory over an epoch that fetches, verifies, decodes and caches
                _epoch(
                    FrameDataset(index, FrameFetcher(client, cache=FrameCache(work / "cache-rss"))),
                    batch_size,
                    workers,
                    rss,
                )
        results["cold"] = cold
        results["rss"] = rss
        service.restart()
        client = service.client(max_pool_connections=32)

        warm_dataset = FrameDataset(index, FrameFetcher(client, cache=FrameCache(work / "cache-warm")))
        _epoch(warm_dataset, batch_size, 0)  # fill the cache
        warm_dataset.stats.reset()
        warm = _runs(lambda: warm_dataset, batch_size, workers, repeats)
        hits = warm_dataset.stats.summary()
        if hits["cache_hit_rate"] < 1.0 or hits["requests"]:
            raise RuntimeError(f"the warm epochs were not served by the cache alone: {hits}")
        encoded_mode = FrameDataset(
            index, FrameFetcher(client, cache=FrameCache(work / "cache-encoded", mode="encoded"))
        )
        _epoch(encoded_mode, batch_size, 0)
        warm_encoded = _runs(lambda: encoded_mode, batch_size, workers, repeats)
        limit = _runs(functools.partial(MemmapDataset, memmap, slope, intercept), batch_size, workers, repeats)
        results["warm"] = {
            "ahi_torch": warm,
            "ahi_torch_encoded_cache": warm_encoded,
            "memmap": limit,
            "hit_rate": hits["cache_hit_rate"],
            "cache_bytes_decoded": _directory_bytes(work / "cache-warm"),
            "cache_bytes_encoded": _directory_bytes(work / "cache-encoded"),
        }

        volumes_index = index.filter(
            np.isin(index.column("series_instance_uid"), np.unique(index.column("series_instance_uid"))[: size.volumes])
        )
        volume_dataset = VolumeDataset(volumes_index, FrameFetcher(client, cache=FrameCache(work / "cache-volumes")))
        cold_volumes = _epoch(volume_dataset, 1, workers)
        warm_volumes = _runs(lambda: volume_dataset, 1, workers, repeats)
        results["volumes"] = {"count": len(volume_dataset), "cold": _rate(*cold_volumes), "warm": warm_volumes}
        results["monai"] = measure_monai(volumes_index, client, work, workers, repeats)
    finally:
        service.stop()
    # Last, alone on the machine: millions of rows want the memory the service held.
    scale_workers = 2 if size.name == "smoke" else 8
    results["index_scale"] = index_scale.measure(size.index_frames, work / "index-scale", workers=scale_workers)
    return results


def measure_monai(index: FrameIndex, client: Any, work: Path, workers: int, repeats: int) -> dict[str, Any] | None:
    """Warm epochs of MONAI's PersistentDataset over LoadAHId references, the ahi_torch frame cache underneath."""
    try:
        from monai.data import PersistentDataset

        from ahi_torch.integrations.monai import LoadAHId, references
    except ImportError:
        return None
    load = LoadAHId("image", index=index, source=FrameFetcher(client, cache=FrameCache(work / "cache-monai-frames")))
    # track_meta keeps MetaTensors on disk; weights_only=False lets torch.load read them back (else: recomputed).
    cache_dir = work / "monai-persistent"
    dataset = PersistentDataset(references(index), load, cache_dir=cache_dir, track_meta=True, weights_only=False)
    first = _epoch(dataset, 1, workers)  # fetches, then writes MONAI's own cache
    return {"first": _rate(*first), "warm": _runs(lambda: dataset, 1, workers, repeats)}


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


def spread(values: list[float]) -> tuple[float, float, float]:
    """(median, min, max) of repeated measurements."""
    return statistics.median(values), min(values), max(values)


def ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Per-run ratios: run k of one side over run k of the other (they ran back to back)."""
    return [a / b for a, b in zip(numerator, denominator, strict=True) if b]


def verdict(values: list[float], target: float | None, higher_is_better: bool = True) -> str:
    """met / missed only when every run agrees; otherwise the margin is inside the spread."""
    if target is None or not values:
        return "-"
    low, high = min(values), max(values)
    if (low >= target) if higher_is_better else (high <= target):
        return "met"
    if (high < target) if higher_is_better else (low > target):
        return "**missed**"
    return "within the spread"


def _row(
    name: str,
    values: list[float] | None,
    target: float | None,
    detail: str,
    higher_is_better: bool = True,
    source: str = "",
) -> str:
    if not values:
        return f"| {name} | - | - | - | {detail} | {source} |"
    median, low, high = spread(values)
    measured = f"{median:.2f}" if len(values) == 1 else f"{median:.2f} ({low:.2f} to {high:.2f})"
    goal = "-" if target is None else (f"≥ {target:g}" if higher_is_better else f"≤ {target:g}")
    return f"| {name} | {measured} | {goal} | {verdict(values, target, higher_is_better)} | {detail} | {source} |"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def markdown(results: dict[str, Any]) -> str:
    size = results["size"]
    cold, warm, decode = results["cold"], results["warm"], results["decode"]
    workers = results["workers"]
    growth = [r["end"] / r["start"] - 1 for r in results["rss"] if r["start"]]
    rss_detail = ", ".join(f"{r['start'] / 1e6:.0f}→{r['end'] / 1e6:.0f} MB" for r in results["rss"]) or "no workers"
    page = "the service's frame files were just written (in the page cache)"
    runs = f"{results['repeats']} time{'s' if results['repeats'] != 1 else ''}"

    def rates(a: list[float], b: list[float]) -> str:
        return f"{_median(a):.0f} vs {_median(b):.0f} frames/s"

    cold_rows = []
    for label in ("wan", "lan"):
        run = cold[label]
        cold_rows += [
            _row(
                f"cold epoch / naive boto3 + pylibjpeg ({label.upper()})",
                ratios(run["ahi_torch"], run["naive"]),
                4.0 if label == "wan" else 1.5,
                rates(run["ahi_torch"], run["naive"]),
                source=page,
            ),
            _row(
                f"cold epoch / tuned naive, 8 requests in flight per worker ({label.upper()})",
                ratios(run["ahi_torch"], run["tuned_naive"]),
                1.5,
                rates(run["ahi_torch"], run["tuned_naive"]),
                source=page,
            ),
            _row(
                f"cold epoch ({label.upper()}) / decode-only bound",
                ratios(run["ahi_torch"], cold["decode_only"]),
                None,
                rates(run["ahi_torch"], cold["decode_only"]),
                source="decode-only: encoded frames already in memory",
            ),
        ]
    # The job's own time: the files already in S3, as they are for AHI (the upload is reported apart).
    imported = results["import"]
    job_s = imported.get("job_s") or imported["import_s"]
    import_rate = imported["files"] / job_s if job_s else 0.0
    encode_bound = results["import"]["encode_per_s_1_thread"] * results["import"]["cores"]
    examine_bound = imported.get("examine_per_s_1_process", 0.0) * results["import"]["cores"]
    cpu = results["cpu"]
    cpu_ms, cpu_runs = cpu["ms_per_frame"], cpu["runs"]
    cpu_source = "CPU of the client process only (all threads); the service runs in its own"
    cpu_rows = [
        _row(
            f"{title} / {base_title}",
            ratios(cpu_runs[name], cpu_runs[base]),
            target,
            f"{cpu_ms[name]:.2f} vs {cpu_ms[base]:.2f} ms",
            higher_is_better=False,
            source=cpu_source,
        )
        for title, name, base_title, base, target in (
            ("cold client CPU per frame, decoded cache", "ahi_torch_decoded_cold", "decode-only", "decode_only", 1.3),
            ("cold client CPU per frame, no cache", "ahi_torch_no_cache", "decode-only", "decode_only", 1.15),
            (
                "warm client CPU per frame, decoded cache",
                "ahi_torch_decoded_warm",
                "numpy memmap read as a dataset",
                "memmap_dataset",
                1.25,
            ),
            ("warm client CPU per frame, encoded cache", "ahi_torch_encoded_warm", "decode-only", "decode_only", 1.1),
            ("signing CPU per request, ahi_torch", "sign_ahi_torch", "botocore SigV4Auth", "sign_botocore", None),
        )
    ]
    payload = results["index"]["frames"] * size["pixels"] ** 2 * 2
    cache_bytes_row = _row(
        "decoded cache bytes on disk / payload bytes it holds",
        [warm["cache_bytes_decoded"] / payload],
        1.05,
        f"{warm['cache_bytes_decoded'] / 1e6:.1f} vs {payload / 1e6:.1f} MB (packs and index)",
        higher_is_better=False,
        source="the warm cache after its fill",
    )
    cpu_names = {
        "decode_only": "imagecodecs decode of bytes in memory",
        "decode_only_dataset": "the same as a dataset: decode, float tensor, collate",
        "urllib3_and_decode": "signed urllib3 POST + the same decode (the transfer floor)",
        "naive_boto3_pylibjpeg": "naive boto3 + pylibjpeg-openjpeg dataset",
        "ahi_torch_no_cache": "FrameDataset, no cache",
        "ahi_torch_no_cache_1_thread": "FrameDataset, no cache, 1 fetch thread (frames fetched one after another)",
        "ahi_torch_decoded_cold": "FrameDataset, decoded cache, cold",
        "ahi_torch_encoded_cold": "FrameDataset, encoded cache, cold",
        "ahi_torch_decoded_warm": "FrameDataset, decoded cache, warm",
        "ahi_torch_encoded_warm": "FrameDataset, encoded cache, warm",
        "memmap_dataset": "numpy memmap read as a dataset (rescale, float tensor, collate)",
        "sign_botocore": "stage: SigV4 signature by botocore's SigV4Auth",
        "sign_ahi_torch": "stage: SigV4 signature by ahi_torch's FrameSigner (the same bytes)",
        "transfer_unsigned": "stage: unsigned urllib3 POST, body read, no decode",
        "transfer_signed": "stage: FrameTransport.get (sign, send, read), no decode",
        "verify_crc32": "stage: CRC32 of the decoded pixels",
        "cache_write": "stage: FrameCache.put_frame, writer thread included",
        "cache_read": "stage: FrameCache.get_frame, warm",
        "item_assembly": "stage: per-item assembly (refs, geometry, meta, labels, tensor) a batch at a time",
    }
    progressive = results["progressive"]
    full_rate = progressive["full_download"]["frames_per_s"]
    progressive_rows = [
        _row(
            "reduce=2 progressive read / full download, frames/s (LAN)",
            ratios(progressive["reduce2_progressive"]["frames_per_s"], full_rate),
            None,
            f"{_median(progressive['reduce2_progressive']['frames_per_s']):.0f} vs {_median(full_rate):.0f} frames/s; "
            f"{progressive['reduce2_progressive']['bytes_per_frame'] / 1e3:.0f} vs "
            f"{progressive['full_download']['bytes_per_frame'] / 1e3:.0f} kB per frame",
            source="8 threads in one process, no cache",
        ),
        _row(
            "reduce=2 progressive read / reduce=2 from the whole body, frames/s (LAN)",
            ratios(
                progressive["reduce2_progressive"]["frames_per_s"], progressive["reduce2_whole_body"]["frames_per_s"]
            ),
            None,
            f"{_median(progressive['reduce2_whole_body']['frames_per_s']):.0f} frames/s reading whole bodies",
            source="8 threads in one process, no cache",
        ),
    ]
    cpu_table = [
        f"Client CPU per frame over the same {cpu['frames']} frames (ms of the client process, all threads; "
        f"median of {len(cpu_runs['decode_only'])} runs; CRC32 by {cpu['crc32']}):",
        "",
        "| path | CPU/frame (ms) | ÷ decode-only |",
        "|---|---|---|",
        *(
            f"| {label} | {cpu_ms[name]:.2f} | {cpu_ms[name] / cpu_ms['decode_only']:.2f} |"
            for name, label in cpu_names.items()
            if name in cpu_ms  # a run from before the row existed lacks it
        ),
    ]
    monai = results.get("monai")
    monai_row = (
        _row(
            "MONAI PersistentDataset (LoadAHId) / VolumeDataset, warm volumes",
            ratios(monai["warm"], results["volumes"]["warm"]),
            None,
            f"{_median(monai['warm']):.2f} vs {_median(results['volumes']['warm']):.2f} volumes/s",
            source="MONAI's .pt files and the frame cache were just written",
        )
        if monai
        else _row("MONAI PersistentDataset", None, None, "skipped: MONAI is not installed")
    )
    lines = [
        "# Benchmarks",
        "",
        f"Run `{results['command']}` on {results['machine']} ({results['date']}, commit {results['commit']}). "
        f"Dataset: {size['series']} series x {size['slices']} slices of {size['pixels']}x{size['pixels']} int16 "
        f"({results['index']['frames']} frames), DataLoader batch size {results['batch_size']}, "
        f"{workers} workers, start method {results['start_method']}. The local AHI runs in a process of its own "
        "(its CPU is not the client's; workers do not inherit it). "
        f'"WAN" rows add {NETWORK_LATENCY * 1000:.0f} ms to every GetImageFrame (a network round trip to AHI); '
        f'"LAN" rows talk to the local service directly. Each epoch ran {runs} back to back: '
        "ratios are medians of per-run ratios, with their range, and a verdict is given only when every run "
        "agrees. All numbers come from this one run.",
        "",
        "| ratio | measured (range) | target | verdict | absolute numbers (medians) | where the data was |",
        "|---|---|---|---|---|---|",
        _row(
            "warm epoch / numpy memmap limit",
            ratios(warm["ahi_torch"], warm["memmap"]),
            0.9,
            rates(warm["ahi_torch"], warm["memmap"]) + f"; cache hit rate {warm['hit_rate']:.0%}",
            source="decoded cache and .npy just written (both in the page cache)",
        ),
        *cold_rows,
        *cpu_rows,
        cache_bytes_row,
        *progressive_rows,
        _row(
            "import files/s / HTJ2K encode bound (cores x 1-thread encode rate; the wrong floor, see the next row)",
            [import_rate / encode_bound] if encode_bound else None,
            None,
            f"{import_rate:.0f} files/s vs {encode_bound:.0f} encodes/s "
            f"({results['import']['cores']} cores x {results['import']['encode_per_s_1_thread']:.0f}); "
            f"import job {job_s:.1f} s (submittedAt to endedAt), upload to S3 before it "
            f"{imported.get('upload_s', 0.0):.1f} s",
            source="StartDICOMImportJob of the benchmark's files, service in its own process",
        ),
        _row(
            "import files/s / examine bound (cores x files one process parses, encodes and verifies per s)",
            [import_rate / examine_bound] if examine_bound else None,
            0.8,
            f"{import_rate:.0f} vs {examine_bound:.0f} files/s "
            f"({results['import']['cores']} cores x {imported.get('examine_per_s_1_process', 0.0):.0f}"
            + _examine_beside(imported)
            + ")"
            + _import_cpu(imported),
            source="the benchmark's files; examine in memory, one process, right before and after the job",
        ),
        _row(
            "OpenJPH / pylibjpeg-openjpeg HTJ2K decode, 1 thread",
            [decode["imagecodecs_1"] / decode["openjpeg_1"]],
            1.8,
            f"{decode['imagecodecs_1']:.0f} vs {decode['openjpeg_1']:.0f} frames/s",
            source="encoded frames in memory",
        ),
        _row(
            f"OpenJPH / pylibjpeg-openjpeg HTJ2K decode, {workers} threads",
            [decode[f"imagecodecs_{workers}"] / decode[f"openjpeg_{workers}"]],
            None,
            f"{decode[f'imagecodecs_{workers}']:.0f} vs {decode[f'openjpeg_{workers}']:.0f} frames/s",
            source="encoded frames in memory",
        ),
        _row(
            "worker RSS growth over a cold epoch (fetch, verify, decode, cache)",
            [max(growth, default=0.0)],
            0.10,
            rss_detail,
            higher_is_better=False,
            source="workers forked from a client without the service",
        ),
        _row(
            "warm epoch, encoded cache / decoded cache",
            ratios(warm["ahi_torch_encoded_cache"], warm["ahi_torch"]),
            None,
            rates(warm["ahi_torch_encoded_cache"], warm["ahi_torch"])
            + f"; cache {warm['cache_bytes_encoded'] / 1e6:.0f} vs {warm['cache_bytes_decoded'] / 1e6:.0f} MB",
            source="both caches just written (in the page cache)",
        ),
        monai_row,
        *patch_rows(results.get("patches")),
        *index_scale_rows(results["index_scale"]),
        "",
        *cpu_table,
        "",
        *where_the_time_goes(cpu_ms),
        "",
        "| measurement | value |",
        "|---|---|",
        f"| 3D volumes, cold / warm | {results['volumes']['cold']:.2f} / {_median(results['volumes']['warm']):.2f} "
        f"volumes/s ({results['volumes']['count']} volumes of {size['slices']} slices) |",
        f"| index build | {results['index']['seconds']:.2f} s for {results['index']['image_sets']} image sets "
        f"({results['index']['frames']} frames), {results['index']['bytes_per_frame']:.0f} bytes per frame in memory |",
        f"| import (StartDICOMImportJob) | {imported['files']} files: upload {imported.get('upload_s', 0.0):.1f} s, "
        f"job {job_s:.1f} s |",
        f"| local service GetImageFrame, 1 thread | {results['service']['requests_per_s_1']:.0f} requests/s, "
        f"{results['service']['mb_per_s_1']:.0f} MB/s |",
        f"| local service GetImageFrame, 8 threads | {results['service']['requests_per_s_8']:.0f} requests/s, "
        f"{results['service']['mb_per_s_8']:.0f} MB/s |",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def where_the_time_goes(ms: dict[str, float]) -> list[str]:
    """Each frame path split into the stages this run measured, and the floor they add up to.

    A target below its floor cannot be met by ahi_torch's own code; what lies above the floor is
    ahi_torch's (per-item assembly, threads, the transport's bookkeeping).
    """
    conversion = ms["decode_only_dataset"] - ms["decode_only"]  # float tensor and collate
    transfer = ms["transfer_unsigned"] + ms["sign_ahi_torch"]
    paths = (
        (
            "cold, no cache",
            "ahi_torch_no_cache",
            {
                "decode": ms["decode_only"],
                "signed transfer": transfer,
                "CRC32": ms["verify_crc32"],
                "tensor and collate": conversion,
            },
            "decode_only",
        ),
        (
            "cold, decoded cache",
            "ahi_torch_decoded_cold",
            {
                "decode": ms["decode_only"],
                "signed transfer": transfer,
                "CRC32": ms["verify_crc32"],
                "cache write": ms["cache_write"],
                "tensor and collate": conversion,
            },
            "decode_only",
        ),
        (
            "warm, decoded cache",
            "ahi_torch_decoded_warm",
            {"cache read (lookup, preadv, CRC32)": ms["cache_read"], "tensor and collate": conversion},
            "memmap_dataset",
        ),
        (
            "warm, encoded cache",
            "ahi_torch_encoded_warm",
            {"cache read": ms["cache_read"], "decode": ms["decode_only"], "tensor and collate": conversion},
            "decode_only",
        ),
    )
    lines = [
        "Where the time goes: each path against the sum of the stages it cannot skip, all measured above "
        "(ms of client CPU per frame):",
        "",
        "| path | measured | floor: the stages it needs | floor ÷ the target's baseline | above the floor |",
        "|---|---|---|---|---|",
    ]
    paths = (
        paths[0],
        ("cold, no cache, 1 fetch thread", "ahi_torch_no_cache_1_thread", paths[0][2], "decode_only"),
        *paths[1:],
    )
    for title, name, stages, base in paths:
        if name not in ms:  # a run from before the row existed
            continue
        floor = sum(stages.values())
        parts = " + ".join(f"{label} {value:.2f}" for label, value in stages.items())
        lines.append(
            f"| {title} | {ms[name]:.2f} | {floor:.2f} = {parts} | {floor / ms[base]:.2f} | {ms[name] - floor:+.2f} |"
        )
    lines += [
        "",
        "A target below its floor (the fourth column) cannot be met by ahi_torch's code alone. The last column is "
        "ahi_torch's own: per-item assembly, handing frames to and from the fetch threads, the transport's "
        "bookkeeping (http.client's header parsing, the health and rate counters) and the page faults of fresh "
        "frame buffers; the 1-fetch-thread row, where present, separates the threads' share.",
    ]
    if "item_assembly" in ms:
        lines[-1] += (
            f" Per-item assembly alone (references, geometry, meta, labels and the image tensor, built a batch of "
            f"16 at a time from the shared table; `item_assembly`) costs {ms['item_assembly']:.3f} ms per frame, "
            f"of which the float tensor is part of the floor's tensor and collate."
        )
    return lines


def _examine_beside(imported: dict[str, Any]) -> str:
    """The examine rates the bound is the mean of, measured on both sides of the job."""
    beside = imported.get("examine_per_s_before_after")
    if not beside:  # a run from before the bound was bracketed
        return ""
    return f", the mean of {beside[0]:.0f} right before the job and {beside[1]:.0f} right after it"


def _import_cpu(imported: dict[str, Any]) -> str:
    """Where an import's time goes: the service's CPU per file against examine's own."""
    job_cpu, examine_rate = imported.get("job_cpu_s"), imported.get("examine_per_s_1_process")
    if not job_cpu or not examine_rate:  # a run from before the service's CPU was measured
        return ": the import's own work per file, without S3, IPC or writes"
    per_file, examine_ms = 1000 * job_cpu / imported["files"], 1000 / examine_rate
    return (
        f"; the service (its process, fork server and pool) spent {per_file:.1f} ms of CPU per file against "
        f"{examine_ms:.1f} ms of examine: S3 reads, handing files to the pool, frame writes, SQLite and the job "
        f"files take the rest, so with every core busy the import reaches at most {examine_ms / per_file:.2f}"
    )


def patch_rows(patches: dict[str, Any] | None) -> list[str]:
    """Issue #24's whole-slide rows: random 256² patches at level 0 against the naive boto3 loop."""
    if patches is None:  # a run from before the rows existed
        return []
    rates, median = patches["patches_per_s"], patches["median"]
    source = f"{patches['patches']} patches of a {patches['slide']}, one process"
    return [
        _row(
            "whole-slide patches / naive boto3 loop, patches/s (uncached)",
            ratios(rates["ahi_torch_cold"], rates["naive_boto3"]),
            None,
            f"{median['ahi_torch_cold']:.0f} vs {median['naive_boto3']:.0f} patches/s; "
            f"{patches['tiles_per_patch']:.2f} tiles fetched per patch",
            source=source,
        ),
        _row(
            "whole-slide patches, warm frame cache / naive boto3 loop, patches/s",
            ratios(rates["ahi_torch_warm"], rates["naive_boto3"]),
            None,
            f"{median['ahi_torch_warm']:.0f} vs {median['naive_boto3']:.0f} patches/s",
            source=source + ", tiles in the decoded cache",
        ),
    ]


def index_scale_rows(scale: dict[str, Any]) -> list[str]:
    """Issue #15's shared index: bytes per frame for the node, worker memory over an index epoch."""
    frames = scale["frames"]
    reports, growth = scale["workers_memory"], scale["worker_growth"]
    build = scale["build"]
    where = f"{frames / 1e6:g}M generated frames ({scale['image_sets']} CT image sets), no service"
    return [
        _row(
            f"index resident per frame, whole node, {scale['workers']} spawned workers (bytes)",
            [scale["node_bytes"] / frames],
            100,
            f"shared table {scale['table_bytes'] / frames:.1f} B/frame mapped by all "
            f"+ worker growth {sum(growth) / frames:.2f} B/frame; without it each worker held "
            f"{scale['index_bytes_in_memory'] / frames:.0f} B/frame (the coded index in memory)",
            higher_is_better=False,
            source=where,
        ),
        _row(
            "worker private memory growth over an epoch of the index",
            [max(growth, default=0) / max(1, min(r["before"]["uss"] for r in reports))],
            0.10,
            ", ".join(f"{r['before']['uss'] / 1e6:.0f}→{r['after']['uss'] / 1e6:.0f} MB" for r in reports)
            + f"; table mapped {max(r['after']['mapped_rss'] for r in reports) / 1e6:.0f} MB in each",
            higher_is_better=False,
            source=where,
        ),
        _row(
            "index build CPU per frame (parse + rows), µs",
            [build["index_cpu_s"] / frames * 1e6],
            None,
            f"build {build['seconds']:.0f} s wall in {build['processes']} processes "
            f"(metadata generation {build['generate_cpu_s']:.0f} s CPU of it); save {scale['save_s']:.1f} s, "
            f"load {scale['load_s']:.1f} s, dataset (shared table) {scale['dataset_s']:.1f} s; "
            f"Parquet {scale['parquet_bytes'] / frames:.0f} B/frame; epoch {scale['epoch_s']:.0f} s",
            source=where,
        ),
    ]


def _commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")


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
    parser.add_argument("--repeats", type=int, help="runs of each epoch (default 3; 1 with --smoke)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="where benchmarks.md and .json go")
    parser.add_argument("--no-readme", action="store_true", help="do not refresh the table in README.md")
    group.add_argument(
        "--render", type=Path, metavar="JSON", help="write the tables of a saved run (its benchmarks.json) again"
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.render is not None:  # the numbers of that run, laid out by this version's tables
        results = json.loads(args.render.read_text())
        _write(results, args.out, not args.no_readme, printer)
        return results
    size = data.SIZES["smoke" if args.smoke else "quick" if args.quick else "full"]
    work = Path(tempfile.mkdtemp(prefix="ahi-bench-"))
    started = time.perf_counter()
    try:
        repeats = args.repeats or (1 if args.smoke else 3)
        results = run(size, args.workers, args.batch_size, work, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results.update(
        command="python -m bench" + (" --quick" if args.quick else " --smoke" if args.smoke else ""),
        machine=cpu_description(),
        commit=_commit(),
        date=time.strftime("%Y-%m-%d"),
        versions=_versions(),
        seconds=time.perf_counter() - started,
    )
    _write(results, args.out, not args.no_readme, printer)
    printer(f"(benchmark run took {results['seconds']:.0f} s)")
    return results


def _write(results: dict[str, Any], out: Path, readme: bool, printer: Callable[[str], None]) -> None:
    table = markdown(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmarks.md").write_text(table)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2, default=str))
    if readme:
        update_readme(ROOT / "README.md", table)
    printer(table)


if __name__ == "__main__":
    main()
