"""A frame index of millions of frames, built from generated metadata documents without the service.

``python -m bench.index_scale --frames 5000000`` builds a synthetic archive's index (CT series of
a few hundred 512² slices, AHI's metadata layout: hex IDs, UIDs, per-frame checksums), then
measures what issue #15 targets: build and load time, bytes per frame of the Parquet index,
of the index in memory and of the shared table workers map, and the resident memory of 8
spawned DataLoader workers reading every frame's reference through an epoch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ahi_torch.sample.metadata_documents import DATASTORE, metadata_document

# --- building -------------------------------------------------------------------------------------

SLICES = 300


def _build_part(job: tuple[int, int, str]) -> dict[str, Any]:
    """Rows of image sets ``start..stop`` written to an Arrow file: (generate, index) CPU seconds."""
    import time

    import pyarrow as pa

    from ahi_torch.index.columns import RowBuffer
    from ahi_torch.metadata import ImageSetMetadata

    start, stop, path = job
    rows = RowBuffer()
    generate = index = 0.0
    for number in range(start, stop):
        began = time.process_time()
        document = metadata_document(number, DATASTORE, SLICES)
        parsed_at = time.process_time()
        rows.append({"version": 1, "updatedAt": 1.7e9, "isPrimary": True}, ImageSetMetadata.parse(document), DATASTORE)
        generate += parsed_at - began
        index += time.process_time() - parsed_at
    began = time.process_time()
    table = rows.table()
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return {"generate_cpu_s": generate, "index_cpu_s": index + time.process_time() - began, "frames": table.num_rows}


def build(frames: int, work: Path, processes: int = 2) -> tuple[Any, dict[str, float]]:
    """A FrameIndex of about ``frames`` frames (whole series of :data:`SLICES`), built in ``processes``."""
    import multiprocessing as mp
    import time

    import pyarrow as pa

    from ahi_torch.index import FrameIndex
    from ahi_torch.index.build import SORT_KEYS
    from ahi_torch.index.columns import sort_rows
    from ahi_torch.index.frame_index import new_info

    image_sets = max(1, frames // SLICES)
    step = -(-image_sets // (processes * 8))
    jobs = [(s, min(s + step, image_sets), str(work / f"part-{s}.arrow")) for s in range(0, image_sets, step)]
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(processes) as pool:
        parts = pool.map(_build_part, jobs)
    merge_started = time.process_time()
    tables = [pa.ipc.open_file(pa.memory_map(path)).read_all() for _, _, path in jobs]
    table = sort_rows(pa.concat_tables(tables).combine_chunks(), SORT_KEYS)
    index = FrameIndex(table, new_info(DATASTORE, [[]], [], False))
    merge_cpu = time.process_time() - merge_started
    for _, _, path in jobs:
        Path(path).unlink()
    return index, {
        "seconds": time.perf_counter() - started,
        "processes": processes,
        "generate_cpu_s": sum(p["generate_cpu_s"] for p in parts),
        "index_cpu_s": sum(p["index_cpu_s"] for p in parts) + merge_cpu,
    }


# --- memory ---------------------------------------------------------------------------------------


def memory(under: str | None = None) -> dict[str, int]:
    """This process's resident bytes: all (rss), unique to it (uss), and of mappings under ``under``."""
    totals = {"rss": 0, "uss": 0, "mapped_rss": 0, "mapped_pss": 0}
    path = ""
    with Path("/proc/self/smaps").open() as smaps:
        for line in smaps:
            fields = line.split()
            if not fields:
                continue
            if not fields[0].endswith(":"):  # a mapping's header: address range, ..., path
                path = fields[5] if len(fields) > 5 else ""
                continue
            key, kilobytes = fields[0][:-1], fields[1] if len(fields) > 1 else "0"
            if not kilobytes.isdigit():
                continue
            value = int(kilobytes) * 1024
            if key == "Rss":
                totals["rss"] += value
                if under and path.startswith(under):
                    totals["mapped_rss"] += value
            elif key in ("Private_Clean", "Private_Dirty"):
                totals["uss"] += value
            elif key == "Pss" and under and path.startswith(under):
                totals["mapped_pss"] += value
    return totals


class IndexEpoch:
    """Item k: rows k, k + parts, ... of a dataset's table read as a fetch would (``ref``) plus ``meta``.

    Run by a DataLoader of ``parts`` spawned workers, one item each, it is an epoch over the
    index with every worker's memory measured before and after its share.
    """

    def __init__(self, dataset: Any, parts: int) -> None:
        self.dataset = dataset
        self.parts = parts

    def __len__(self) -> int:
        return self.parts

    def __getitem__(self, part: int) -> dict[str, Any]:
        table = self.dataset.frame_table
        under = str(table.shared.directory)
        before = memory(under)
        for row in range(part, len(table), self.parts):
            table.ref(row)
            table.meta(row)
        after = memory(under)
        return {"pid": os.getpid(), "before": before, "after": after}


def measure(frames: int, work: Path, workers: int = 8) -> dict[str, Any]:
    """Build, save, load and map an index of ``frames`` frames; an epoch over it in ``workers`` spawned workers."""
    import gc
    import time

    from torch.utils.data import DataLoader

    from ahi_torch.client import AHIClient, ClientConfig
    from ahi_torch.datasets import FrameDataset
    from ahi_torch.index import FrameIndex

    work.mkdir(parents=True, exist_ok=True)
    index, built = build(frames, work)
    count = len(index)
    in_memory = index.table.nbytes
    started = time.perf_counter()
    path = index.save(work / "index.parquet")
    save_s = time.perf_counter() - started
    del index
    gc.collect()
    started = time.perf_counter()
    index = FrameIndex.load(path)
    load_s = time.perf_counter() - started
    client = AHIClient(ClientConfig(endpoint_url="http://127.0.0.1:9", region="us-east-1"))
    started = time.perf_counter()
    dataset = FrameDataset(index, client, table_dir=work / "tables")
    dataset_s = time.perf_counter() - started
    del index
    gc.collect()
    table_bytes = dataset.frame_table.nbytes
    loader = DataLoader(
        IndexEpoch(dataset, workers),
        batch_size=None,
        num_workers=workers,
        multiprocessing_context="spawn",
        prefetch_factor=1,
    )
    started = time.perf_counter()
    reports = list(loader)
    epoch_s = time.perf_counter() - started
    growth = [max(0, r["after"]["uss"] - r["before"]["uss"]) for r in reports]
    return {
        "frames": count,
        "image_sets": count // SLICES,
        "workers": workers,
        "build": built,
        "save_s": save_s,
        "load_s": load_s,
        "dataset_s": dataset_s,
        "epoch_s": epoch_s,
        "parquet_bytes": path.stat().st_size,
        "index_bytes_in_memory": in_memory,
        "table_bytes": table_bytes,
        "encodings": dataset.frame_table.shared.encodings,
        "workers_memory": reports,
        "worker_growth": growth,
        "node_bytes": table_bytes + sum(growth),
    }


if __name__ == "__main__":
    import argparse
    import json
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.index_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5_000_000)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ahi-index-scale-") as scratch:
        print(json.dumps(measure(args.frames, Path(scratch), args.workers), indent=2))
