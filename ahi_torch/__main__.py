"""``python -m ahi_torch`` runs the ``ahi-torch`` command."""

from .cli.main import entry_point

entry_point()
