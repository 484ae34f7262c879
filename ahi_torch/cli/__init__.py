"""The ``ahi-torch`` command: local service, index, cache and demo subcommands.

Exit codes scripts can rely on: 0 success, 1 operational failure (unreachable endpoint, failed
import, checksum mismatch), 2 usage or configuration error. Errors print one line, no traceback.
"""

from .main import main

__all__ = ["main"]
