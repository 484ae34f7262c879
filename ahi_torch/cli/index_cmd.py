"""``ahi-torch index build CONFIG`` and ``ahi-torch index show INDEX``."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from .common import EXIT_OK, add_overrides


def register(commands: Any) -> None:
    index = commands.add_parser("index", help="build and inspect frame indexes")
    sub = index.add_subparsers(dest="index_command", required=True, metavar="SUBCOMMAND")
    build = sub.add_parser("build", help="search a data store and index its frames (or refresh the index)")
    build.add_argument("config", type=Path, help="a configs/*.yaml file")
    build.add_argument("--output", type=Path, help="write the index here instead of index.path")
    build.add_argument("--rebuild", action="store_true", help="build it again even if a saved index matches")
    add_overrides(build)
    build.set_defaults(handler=build_command)
    show = sub.add_parser("show", help="summarise a saved index")
    show.add_argument("index", type=Path, help="a Parquet index file")
    show.set_defaults(handler=show_command)


def build_command(args: argparse.Namespace) -> int:
    from ..config import build_index_from_config, load

    overrides = list(args.override)
    if args.output:
        overrides.append(f"index.path={args.output}")
    cfg = load(args.config, overrides)
    index = build_index_from_config(cfg, progress=sys.stderr.isatty(), rebuild=args.rebuild)
    print(
        f"indexed {len(index)} frames of {index.image_set_count} image sets -> {cfg.index.path}"
        f" (version {index.version[:12]})"
    )
    return EXIT_OK


def show_command(args: argparse.Namespace) -> int:
    from ..index import FrameIndex

    summary = FrameIndex.load(args.index).summary()
    built = summary.get("built_at")
    rows = [
        ("index", str(args.index)),
        ("version", summary["version"]),
        ("data store", summary.get("datastore_id") or "-"),
        (
            "built",
            dt.datetime.fromtimestamp(built, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if built else "-",
        ),
        ("frames", summary["frames"]),
        ("image sets", summary["image_sets"]),
        ("patients", summary["patients"]),
        ("studies", summary["studies"]),
        ("series", summary["series"]),
        ("instances", summary["instances"]),
        ("modalities", ", ".join(f"{k} {v}" for k, v in sorted(summary["modalities"].items()))),
        ("transfer syntaxes", ", ".join(f"{k} {v}" for k, v in sorted(summary["transfer_syntaxes"].items()))),
        ("memory", f"{summary['bytes_in_memory'] / max(1, summary['frames']):.0f} bytes per frame"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    return EXIT_OK
