"""Client configuration: a frozen, picklable description of how to reach AHI."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError

RETRY_MODES = ("legacy", "standard", "adaptive")


@dataclass(frozen=True)
class ClientConfig:
    """How an :class:`~ahi_torch.client.AHIClient` connects; carries settings, never a connection.

    >>> ClientConfig(region="us-east-1")                                  # AWS, default credentials
    >>> ClientConfig(endpoint_url="http://127.0.0.1:8080", region="us-east-1",
    ...              access_key_id="local", secret_access_key="local")   # the local AHI

    Args:
        region: AWS region; defaults to ``AWS_REGION``/``AWS_DEFAULT_REGION``.
        endpoint_url: a custom endpoint (the local AHI). Host-prefix injection (``runtime-``) is
            turned off when this is set, and only then: the real endpoints need it.
        profile: a named profile from the AWS config files.
        access_key_id, secret_access_key, session_token: static credentials.
        session_factory: a picklable zero-argument callable returning a ``boto3.Session``, for
            any other credentials provider (assumed roles, SSO, ...). Called once per process.
        max_pool_connections: HTTP connections per process; keep it at least the number of
            concurrent fetches (``FrameFetcher`` uses 16 threads by default).
        retry_mode, max_attempts: botocore retries (throttling, 5xx and connection errors are
            retried with jittered exponential backoff in ``standard`` and ``adaptive`` modes).
        connect_timeout, read_timeout: seconds; a stuck request fails instead of stalling an epoch.
        rate_limits: requests per second per operation shared by every process on this machine
            (e.g. ``{"GetImageFrame": 1000}``), enforced by :mod:`ahi_torch.client.ratelimit`.
    """

    region: str | None = None
    endpoint_url: str | None = None
    profile: str | None = None
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    session_factory: Callable[[], Any] | None = None
    max_pool_connections: int = 32
    retry_mode: str = "standard"
    max_attempts: int = 8
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    rate_limits: dict[str, float] | None = None
    rate_limit_dir: str | None = None

    def __post_init__(self) -> None:
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError(f"retry_mode must be one of {', '.join(RETRY_MODES)}, not {self.retry_mode!r}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.max_pool_connections < 1:
            raise ConfigError(f"max_pool_connections must be at least 1, not {self.max_pool_connections}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0:
            raise ConfigError("connect_timeout and read_timeout must be positive")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ConfigError("give both access_key_id and secret_access_key, or neither")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint_url must start with http:// or https://, not {self.endpoint_url!r}")
        for operation, rate in (self.rate_limits or {}).items():
            if rate <= 0:
                raise ConfigError(f"rate_limits[{operation!r}] must be positive, not {rate}")

    @property
    def resolved_region(self) -> str | None:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
