"""Fault injection: throttling, 5xx, latency, dropped connections and corrupt frames, per operation.

>>> faults = Faults.parse("GetImageFrame:throttle=0.1,error=0.05,drop=0.01,bitflip=0.01;*:latency=0.002")
>>> with LocalAHI(guards=[faults.guard], response_filters=[faults.corrupt]) as ahi: ...
>>> faults.injected
Counter({'throttle': 131, 'error': 60, 'drop': 12, 'bitflip': 11})

Kinds: ``throttle`` (429 ThrottlingException), ``error`` (500 InternalServerException),
``unavailable`` (503), ``latency`` (seconds added to every request), ``drop`` (the connection
closes half-way through the body), ``truncate`` and ``bitflip`` (GetImageFrame bodies cut short
or with one bit flipped, served with status 200). Rates are probabilities per request, drawn
from a seeded generator so a run can be repeated.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter
from dataclasses import dataclass, field, fields, replace

from starlette.requests import Request
from starlette.responses import Response

from ...errors import ConfigError
from .protocol import HttpResponse, error_response

_ERRORS = {
    "throttle": ("ThrottlingException", 429, "Rate exceeded"),
    "error": ("InternalServerException", 500, "Injected internal error"),
    "unavailable": ("ServiceUnavailableException", 503, "Injected service unavailable"),
}


@dataclass(frozen=True)
class FaultSpec:
    """Fault rates (0..1) for one operation, and latency in seconds."""

    throttle: float = 0.0
    error: float = 0.0
    unavailable: float = 0.0
    latency: float = 0.0
    drop: float = 0.0
    truncate: float = 0.0
    bitflip: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value < 0 or (f.name != "latency" and value > 1):
                raise ConfigError(f"fault {f.name}={value}: rates are between 0 and 1, latency is seconds >= 0")


@dataclass
class Faults:
    """Fault specs by operation name (``*`` applies to every operation without its own)."""

    specs: dict[str, FaultSpec] = field(default_factory=dict)
    seed: int = 0
    injected: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._random = random.Random(self.seed)
        self._lock = threading.Lock()

    @classmethod
    def parse(cls, text: str, seed: int = 0) -> Faults:
        """``"Op:kind=rate,kind=rate;*:latency=0.01"`` (operation names as in the AHI API)."""
        names = {f.name for f in fields(FaultSpec)}
        specs: dict[str, FaultSpec] = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            operation, _, settings = part.partition(":")
            if not settings:
                raise ConfigError(f"fault spec {part!r} must look like Operation:kind=rate")
            values = {}
            for setting in settings.split(","):
                kind, _, raw = setting.partition("=")
                kind = kind.strip()
                if kind not in names:
                    raise ConfigError(f"unknown fault kind {kind!r} (allowed: {', '.join(sorted(names))})")
                try:
                    values[kind] = float(raw)
                except ValueError:
                    raise ConfigError(f"fault {kind} needs a number, not {raw!r}") from None
            specs[operation.strip()] = replace(specs.get(operation.strip(), FaultSpec()), **values)
        return cls(specs, seed)

    def spec(self, operation: str) -> FaultSpec:
        return self.specs.get(operation) or self.specs.get("*") or FaultSpec()

    def _roll(self, rate: float, kind: str) -> bool:
        if rate <= 0:
            return False
        with self._lock:
            hit = self._random.random() < rate
            if hit:
                self.injected[kind] += 1
        return hit

    async def guard(self, request: Request, operation: str, body: bytes) -> Response | None:
        """Runs before the handler: latency, then maybe an error response instead of the real one."""
        spec = self.spec(operation)
        if spec.latency:
            await asyncio.sleep(spec.latency)
        for kind, (code, status, message) in _ERRORS.items():
            if self._roll(getattr(spec, kind), kind):
                http = error_response(code, status, message, "injected-fault")
                return Response(content=http.body, status_code=http.status, headers=http.headers)
        return None

    def corrupt(self, operation: str, http: HttpResponse) -> HttpResponse:
        """Runs on successful responses: drop the connection, or damage a frame's bytes."""
        spec = self.spec(operation)
        if self._roll(spec.drop, "drop"):
            return replace(http, drop_after=max(1, len(http.body) // 2))
        if operation != "GetImageFrame":
            return http
        if self._roll(spec.truncate, "truncate"):
            return replace(http, body=http.body[: len(http.body) // 2])
        if self._roll(spec.bitflip, "bitflip"):
            data = bytearray(http.body)
            with self._lock:
                position = self._random.randrange(len(data) // 2, len(data)) if len(data) > 1 else 0
            data[position] ^= 1 << (position % 8)
            return replace(http, body=bytes(data))
        return http
