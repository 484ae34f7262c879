"""``ahi-torch demo``: the whole path on a fresh machine (local AHI, import, index, training)."""

from __future__ import annotations

import argparse
from typing import Any

from .main import EXIT_OK


def register(commands: Any) -> None:
    demo = commands.add_parser("demo", help="run the end-to-end demo against an embedded local AHI")
    demo.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from ..local import LocalAHI

    with LocalAHI() as ahi:
        datastore_id = ahi.create_datastore("demo")
        for summary in ahi.client().iter_datastores():
            print(summary["datastoreId"], summary["datastoreName"], summary["datastoreStatus"])
        assert datastore_id
    return EXIT_OK
