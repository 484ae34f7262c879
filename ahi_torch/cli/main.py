"""Argument parsing and error handling shared by every ``ahi-torch`` subcommand."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import AHIError, ConfigError
from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Command, UsageError

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "UsageError", "entry_point", "main"]


def _parser() -> argparse.ArgumentParser:
    from . import cache_cmd, demo_cmd, index_cmd, local_cmd

    parser = argparse.ArgumentParser(
        prog="ahi-torch",
        description="AWS HealthImaging for PyTorch: local service, indexes, cache and demo.",
    )
    parser.add_argument("--version", action="version", version=f"ahi-torch {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (local_cmd, index_cmd, cache_cmd, demo_cmd):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by ``python -m ahi_torch``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    handler: Command = args.handler
    try:
        return handler(args)
    except (ConfigError, UsageError) as error:
        print(f"ahi-torch: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except AHIError as error:
        print(f"ahi-torch: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("ahi-torch: interrupted", file=sys.stderr)
        return 130
    except OSError as error:
        print(f"ahi-torch: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as error:  # one line, not a traceback; -v shows the traceback
        if args.verbose:
            raise
        print(f"ahi-torch: error: {type(error).__name__}: {error} (run with -v for details)", file=sys.stderr)
        return EXIT_FAILURE


def entry_point() -> None:
    sys.exit(main())
