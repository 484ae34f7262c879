"""The guards ``LocalAHI`` and ``ahi-torch local serve`` install: SigV4 checks and fault injection."""

from __future__ import annotations

from .app import Guard, ResponseFilter
from .faults import Faults
from .sigv4 import SignatureVerifier

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def signature_required(host: str, require_signature: bool | None) -> bool:
    """Explicit choice, else on whenever the service listens beyond loopback."""
    return require_signature if require_signature is not None else host not in LOOPBACK_HOSTS


def guards_for(
    *,
    host: str,
    faults: Faults | str | None,
    require_signature: bool | None,
    credentials: tuple[str, str],
    region: str = "us-east-1",
) -> tuple[list[Guard], list[ResponseFilter]]:
    """Guards in order (signature first, so faults never mask an unauthenticated request)."""
    guards: list[Guard] = []
    filters: list[ResponseFilter] = []
    if signature_required(host, require_signature):
        guards.append(SignatureVerifier({credentials[0]: credentials[1]}, region))
    if faults:
        injector = Faults.parse(faults) if isinstance(faults, str) else faults
        guards.append(injector.guard)
        filters.append(injector.corrupt)
    return guards, filters
