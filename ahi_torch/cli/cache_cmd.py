"""``ahi-torch cache warm|verify CONFIG`` and ``ahi-torch cache stats|repair|clear [CONFIG | --dir DIR]``."""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..counters import counting
from ..errors import CacheError
from .common import EXIT_FAILURE, EXIT_OK, UsageError, add_overrides


def register(commands: Any) -> None:
    cache = commands.add_parser("cache", help="prefetch, verify and inspect the frame cache")
    sub = cache.add_subparsers(dest="cache_command", required=True, metavar="SUBCOMMAND")
    warm = sub.add_parser("warm", help="fetch every frame a config describes into the cache")
    warm.add_argument("config", type=Path)
    warm.add_argument("--threads", type=int, default=8, help="concurrent fetches (default 8)")
    warm.add_argument(
        "--shard",
        metavar="I/N",
        help="warm only what node I of N trains on under loader.sampler=node_pinned "
        "(default under torchrun: GROUP_RANK of WORLD_SIZE/LOCAL_WORLD_SIZE nodes, split by LOCAL_RANK)",
    )
    add_overrides(warm)
    warm.set_defaults(handler=warm_command)
    verify = sub.add_parser("verify", help="check every cached frame against AHI's checksums")
    verify.add_argument("config", type=Path)
    add_overrides(verify)
    verify.set_defaults(handler=verify_command)
    for name, help_text, handler in (
        ("stats", "entries and size of a cache", stats_command),
        ("repair", "rebuild a damaged cache index from the packs, keeping every intact entry", repair_command),
        ("clear", "remove every entry of a cache", clear_command),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument("config", type=Path, nargs="?", help="a config naming the cache (or use --dir)")
        command.add_argument(
            "--dir", type=Path, help="cache directory (default: the config's, else ~/.cache/ahi_torch/frames)"
        )
        add_overrides(command)
        command.set_defaults(handler=handler)


def dataset_config(args: argparse.Namespace) -> Any:
    from ..config import load

    return load(args.config, list(args.override))


def _dataset(args: argparse.Namespace) -> Any:
    from ..config import build_dataset

    cfg = dataset_config(args)
    if not cfg.cache.enabled:
        raise UsageError(f"{args.config}: cache.enabled is false")
    return build_dataset(cfg, progress=sys.stderr.isatty())


def parse_shard(text: str | None, environ: dict[str, str] | None = None) -> tuple[int, int, int, int] | None:
    """(node, nodes, part, parts) from ``--shard I/N``, else from torchrun's environment, else None."""
    env = dict(os.environ) if environ is None else environ
    if text is not None:
        node, _, nodes = text.partition("/")
        if not (node.isdigit() and nodes.isdigit()) or not 0 <= int(node) < int(nodes):
            raise UsageError(f"--shard must look like I/N with 0 <= I < N, not {text!r}")
        return int(node), int(nodes), 0, 1
    if "GROUP_RANK" not in env or "LOCAL_WORLD_SIZE" not in env:
        return None
    try:
        world, per_node = int(env["WORLD_SIZE"]), int(env["LOCAL_WORLD_SIZE"])
        return int(env["GROUP_RANK"]), world // per_node, int(env.get("LOCAL_RANK", "0")), per_node
    except (KeyError, ValueError, ZeroDivisionError):
        raise UsageError("torchrun's GROUP_RANK, WORLD_SIZE and LOCAL_WORLD_SIZE are not whole numbers") from None


def warm_command(args: argparse.Namespace) -> int:
    from ..samplers import assign_to_nodes

    dataset = _dataset(args)
    table = dataset.frame_table
    items = np.arange(len(dataset))
    shard = parse_shard(args.shard)
    where = ""
    if shard is not None:
        node, nodes, part, parts = shard
        loader = dataset_config(args).loader
        if loader.sampler != "node_pinned":
            print(
                f"note: loader.sampler is {loader.sampler}, not node_pinned: training will also read frames "
                "outside this shard",
                file=sys.stderr,
            )
        owners = assign_to_nodes(dataset.group_keys(loader.pin_by), nodes, loader.seed)
        items = np.flatnonzero(owners == node)[part::parts]
        where = f" (node {node} of {nodes}" + (f", part {part} of {parts}" if parts > 1 else "") + ")"
    # Each frame once: overlapping patches share tiles, and a tile is fetched once however many cover it.
    rows = [dataset._rows(int(item)) for item in items]
    refs = table.refs(np.unique(np.concatenate(rows))) if rows else []
    fetcher = dataset.fetcher
    with counting() as counted, ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool:
        for _ in tqdm(
            pool.map(fetcher.get, refs), total=len(refs), desc="warm", unit="frame", disable=not sys.stderr.isatty()
        ):
            pass
    print(
        f"{len(refs)} frames{where}: {counted.cache_hits} already cached, "
        f"{counted.requests} fetched ({counted.bytes_fetched / 1e6:.1f} MB)"
    )
    return EXIT_OK


def verify_command(args: argparse.Namespace) -> int:
    from ..errors import ChecksumMismatch

    dataset = _dataset(args)
    table, fetcher = dataset.frame_table, dataset.fetcher
    cache = fetcher.cache
    assert cache is not None  # _dataset refuses configs with the cache disabled
    if not cache.available:
        raise CacheError(f"cannot verify the frame cache at {cache.directory}: {cache.problem}")
    checked = missing = bad = unlisted = 0
    with counting() as counted:
        for row in tqdm(range(len(table)), desc="verify", unit="frame", disable=not sys.stderr.isatty()):
            ref = table.ref(row)
            pixels = fetcher.cached(ref)
            if pixels is None:
                missing += 1
                continue
            checked += 1
            try:
                unlisted += fetcher.verified_crc(ref, pixels) is None
            except ChecksumMismatch as error:
                bad += 1
                print(f"mismatch: {error}", file=sys.stderr)
    evicted = counted.cache_corrupt_evicted
    at = f" at reduce={fetcher.reduce}" if fetcher.reduce else ""
    print(
        f"{checked} cached frames verified{at}, {bad} checksum mismatches, "
        f"{evicted} corrupt entries evicted, {missing} not cached"
        + (f", {unlisted} without an AHI checksum at this resolution" if unlisted else "")
    )
    return EXIT_FAILURE if bad or evicted else EXIT_OK


def _named_cache(args: argparse.Namespace) -> Any:
    """The cache a config or ``--dir`` names, with the config's size limit and mode."""
    from ..cache import FrameCache
    from ..config import load

    if args.config is not None:
        cfg = load(args.config, list(args.override))
        cache = FrameCache(args.dir or cfg.cache.dir, mode=cfg.cache.mode, size_limit_gb=cfg.cache.size_gb)
    else:
        cache = FrameCache(args.dir)
    if not cache.directory.exists():
        raise UsageError(f"no cache at {cache.directory}")
    return cache


def stats_command(args: argparse.Namespace) -> int:
    stats = _named_cache(args).stats()
    print(f"directory   {stats['directory']}")
    print(f"entries     {stats['entries']}")
    print(f"size        {stats['volume_bytes'] / 2**20:.1f} MiB of {stats['size_limit_bytes'] / 2**30:.1f} GiB")
    return EXIT_OK


def repair_command(args: argparse.Namespace) -> int:
    from ..cache.repair import repair_cache

    report = repair_cache(_named_cache(args))
    if report.backup is None and not report.kept:
        print("no cache to repair")
        return EXIT_OK
    where = f"; the damaged database is at {report.backup}" if report.backup else ""
    print(
        f"indexed {report.kept} intact entries from the packs, "
        f"{report.dropped} packs had a damaged tail that was dropped{where}"
    )
    return EXIT_OK


def clear_command(args: argparse.Namespace) -> int:
    cache = _named_cache(args)
    print(f"removed {cache.clear()} entries from {cache.directory}")
    return EXIT_OK
