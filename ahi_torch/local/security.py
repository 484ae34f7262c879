"""Request guards of the local service: SigV4 verification and fault injection (see issue 8 work)."""

from __future__ import annotations

from .app import Guard, ResponseFilter


def guards_for(
    *, host: str, faults: str | None, require_signature: bool, credentials: tuple[str, str]
) -> tuple[list[Guard], list[ResponseFilter]]:
    """The guards ``ahi-torch local serve`` installs for its options."""
    from ..errors import ConfigError

    if faults or require_signature:
        raise ConfigError("fault injection and signature checks are not available yet")
    return [], []
