"""``ahi-torch demo``: the whole path on a fresh machine (local AHI, import, index, training)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import EXIT_OK, UsageError


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the end-to-end demo against an embedded local AHI",
        description="Start a local AHI, import synthetic and real DICOM, index it and train a small CNN.",
    )
    demo.add_argument("--patients", type=int, default=16, help="synthetic CT patients (default 16)")
    demo.add_argument("--slices", type=int, default=32, help="slices per series (default 32)")
    demo.add_argument("--size", type=int, default=64, help="rows and columns per slice (default 64)")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs: the first cold, then warm (default 3)")
    demo.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    demo.add_argument("--batch-size", type=int, default=16)
    demo.add_argument("--output-dir", default="runs/demo", help="where data, index, cache and manifest go")
    demo.add_argument("--no-real-files", action="store_true", help="skip the pydicom sample files")
    demo.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from ..sample.demo import DemoOptions, run_demo

    if min(args.patients, args.slices, args.size, args.epochs, args.batch_size) < 1 or args.workers < 0:
        raise UsageError("--patients, --slices, --size, --epochs and --batch-size must be positive, --workers >= 0")
    if args.patients < 4:
        raise UsageError("--patients must be at least 4 so both classes reach the training and validation splits")
    options = DemoOptions(
        patients=args.patients,
        slices=args.slices,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        workers=args.workers,
        output_dir=args.output_dir,
        real_files=not args.no_real_files,
    )
    report = run_demo(options, log=lambda line: print(line, flush=True))
    print()
    print("summary")
    print(f"  image sets        {report.image_sets}")
    print(f"  frames            {report.indexed_frames} (train {report.train_frames}, val {report.val_frames})")
    for epoch in report.epochs:
        print(
            f"  epoch {epoch.epoch}           {epoch.frames_per_second:7.0f} frames/s"
            f"  cache hit rate {epoch.cache_hit_rate:4.0%}"
            f"  loss {epoch.loss:.3f}"
        )
    print(f"  val accuracy      {report.val_accuracy:.0%}")
    print(f"  manifest          {report.manifest}")
    return EXIT_OK
