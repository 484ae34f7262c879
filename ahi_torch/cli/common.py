"""What every ``ahi-torch`` subcommand shares: exit codes, the usage error, the ``-o KEY=VALUE`` option.

Subcommand modules import this; :mod:`.main` imports them, so nothing imports back up.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad arguments discovered after parsing (missing files, incompatible options)."""


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )
