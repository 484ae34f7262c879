"""Client configuration: a frozen, picklable description of how to reach AHI."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .quotas import PRESETS

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
        endpoint_timeout: seconds the endpoint may answer no request at all before calls fail
            with :class:`~ahi_torch.errors.EndpointDown` naming it, instead of being retried
            (a service that accepts connections and never answers fails within a minute).
        rate_limits: the account's quotas in requests per second per operation (e.g.
            ``{"GetImageFrame": 1000}``), or ``"aws"`` for AWS's documented quotas. AHI throttles
            per account, so each node takes ``rate_limit_share`` of them, shared by every process
            on the node (:mod:`ahi_torch.client.ratelimit`), with AHI's burst of twice the rate.
        rate_limit_share: this node's share of the quotas; default ``LOCAL_WORLD_SIZE /
            WORLD_SIZE`` under torchrun, else 1 (:func:`~ahi_torch.client.quotas.node_share`).
        rate_limit_store: ``"host:port"`` of a torch.distributed TCPStore, or ``"env"`` for
            ``MASTER_ADDR:MASTER_PORT``: one budget truly shared by every process of the job on
            every node (:mod:`ahi_torch.client.store_budget`); the share is then not applied.
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
    read_timeout: float = 20.0
    endpoint_timeout: float = 45.0
    rate_limits: dict[str, float] | str | None = None
    rate_limit_dir: str | None = None
    rate_limit_share: float | None = None
    rate_limit_store: str | None = None

    def __post_init__(self) -> None:
        if self.retry_mode not in RETRY_MODES:
            raise ConfigError(f"retry_mode must be one of {', '.join(RETRY_MODES)}, not {self.retry_mode!r}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")
        if self.max_pool_connections < 1:
            raise ConfigError(f"max_pool_connections must be at least 1, not {self.max_pool_connections}")
        if self.connect_timeout <= 0 or self.read_timeout <= 0 or self.endpoint_timeout <= 0:
            raise ConfigError("connect_timeout, read_timeout and endpoint_timeout must be positive")
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ConfigError("give both access_key_id and secret_access_key, or neither")
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint_url must start with http:// or https://, not {self.endpoint_url!r}")
        if isinstance(self.rate_limits, str) and self.rate_limits not in PRESETS:
            raise ConfigError(f"rate_limits must be a mapping or one of {', '.join(PRESETS)}, not {self.rate_limits!r}")
        for operation, rate in self.quotas.items():
            if rate <= 0:
                raise ConfigError(f"rate_limits[{operation!r}] must be positive, not {rate}")
        if self.rate_limit_share is not None and not 0 < self.rate_limit_share <= 1:
            raise ConfigError(f"rate_limit_share must be in (0, 1], not {self.rate_limit_share}")

    @property
    def quotas(self) -> dict[str, float]:
        """The account quotas ``rate_limits`` names (empty: no limit)."""
        if isinstance(self.rate_limits, str):
            return dict(PRESETS.get(self.rate_limits, {}))
        return dict(self.rate_limits or {})

    @property
    def resolved_region(self) -> str | None:
        return self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
