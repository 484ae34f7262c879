"""GetImageFrame over a pooled urllib3 connection, signed by botocore: one attempt, no retries.

boto3 spends about 2 ms of CPU on every call (event hooks, request and response objects, its
parsers); for a 200 KB frame that is as much as decoding it. Frames are the one call made
thousands of times a second, so they take a direct path that keeps what matters from botocore:

* the URL comes from the boto3 client of the same configuration: its resolved endpoint, the
  operation's ``requestUri`` and, against AWS's own endpoints only, the ``runtime-`` host prefix;
* requests are signed with the session's credentials (the usual chain: keys, profile, SSO,
  assumed roles, refreshed when they expire) by :class:`~.signing.FrameSigner`, which computes
  botocore's ``SigV4Auth`` signature byte for byte at a fraction of its CPU;
* error responses are parsed by botocore's ``rest-json`` parser into the same
  :mod:`ahi_torch.errors` classes as every other call.

A transport makes exactly one request per call and raises on any failure: retrying is the fetch
layer's job (:mod:`ahi_torch.fetch.retry`), so no frame is retried at two levels.

>>> transport = client.frame_transport                # built lazily in each process
>>> frame = transport.get(datastore_id, image_set_id, frame_id)
>>> frame.content_type, len(frame.data)
('image/jph', 215873)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import botocore
import urllib3
from botocore.exceptions import ClientError
from botocore.httpsession import get_cert_path
from botocore.parsers import create_parser

from .. import __version__
from ..errors import EndpointUnreachable, NoCredentials, from_client_error
from .health import AdaptiveRate, Silence
from .signing import FrameSigner

if TYPE_CHECKING:
    from .ratelimit import RateLimiter
    from .store_budget import StoreBudget

OPERATION = "GetImageFrame"
#: Statuses that mean "slow down" (AHI's ThrottlingException is 429).
THROTTLE_STATUSES = frozenset({429})
#: Bytes read at a time by :meth:`FrameTransport.get_prefix`.
PREFIX_CHUNK = 16 * 1024
#: ``stop(received) -> length wanted | None (cannot tell yet) | -1 (all)``.
PrefixEnd = Callable[[bytes], "int | None"]


class ImageFrame(NamedTuple):
    """One frame as AHI returns it: the encoded bytes and their Content-Type."""

    data: bytes
    content_type: str


def frame_url_template(endpoint_url: str, request_uri: str, host_prefix: str | None) -> str:
    """``endpoint_url`` with ``host_prefix`` prepended to its host, followed by ``request_uri``."""
    parts = urlsplit(endpoint_url)
    netloc = f"{host_prefix}{parts.netloc}" if host_prefix else parts.netloc
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", "")) + request_uri


class FrameTransport:
    """One process's GetImageFrame connection pool; see the module docstring.

    Args:
        boto3_client: a ``medical-imaging`` client, for its endpoint, model and configuration.
        credentials: botocore credentials (``session.get_credentials()``).
        max_connections: connections kept open (one per concurrent fetch thread).
        connect_timeout, read_timeout: seconds.
        limiter: the shared request budget, taken once per request.
        endpoint_timeout: seconds without any answer after which a timeout raises
            :class:`EndpointDown` instead of being retried (see :mod:`.health`).
        silence: the client's own :class:`Silence`, so an answer to any call of the process
            counts (a new one with ``endpoint_timeout`` when None).

    Throttles lower this process's send rate (:class:`AdaptiveRate`, botocore's adaptive mode)
    until the service stops throttling.
    """

    def __init__(
        self,
        boto3_client: Any,
        credentials: Any,
        *,
        max_connections: int = 32,
        connect_timeout: float = 5.0,
        read_timeout: float = 20.0,
        limiter: RateLimiter | StoreBudget | None = None,
        endpoint_timeout: float = 45.0,
        silence: Silence | None = None,
    ) -> None:
        meta = boto3_client.meta
        self.operation = meta.service_model.operation_model(OPERATION)
        prefix = (self.operation.endpoint or {}).get("hostPrefix") if meta.config.inject_host_prefix else None
        self.url_template = frame_url_template(meta.endpoint_url, self.operation.http["requestUri"], prefix)
        self.endpoint_url = meta.endpoint_url
        self.region = meta.region_name
        self.signing_name = meta.service_model.signing_name
        self.credentials = credentials
        self.limiter = limiter
        self.silence = silence or Silence(self.endpoint_url, endpoint_timeout)
        self.adaptive = AdaptiveRate()
        self.user_agent = f"ahi-torch/{__version__} botocore/{botocore.__version__}"
        self.signer = FrameSigner(self.url_template, self.region, self.signing_name, self.user_agent)
        parts = urlsplit(self.url_template)
        self.origin, self.path_template = f"{parts.scheme}://{parts.netloc}", parts.path
        self._parser = create_parser("rest-json")
        # Every frame goes to one host: its connection pool, without a PoolManager's per-call lookup.
        self._pool = urllib3.connection_from_url(
            self.url_template,
            maxsize=max_connections,
            block=False,
            retries=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            **({"ca_certs": get_cert_path(True)} if self.url_template.startswith("https:") else {}),
        )

    def __repr__(self) -> str:
        return f"FrameTransport({self.url_template})"

    def url(self, datastore_id: str, image_set_id: str) -> str:
        return self.origin + self.path(datastore_id, image_set_id)

    def path(self, datastore_id: str, image_set_id: str) -> str:
        return self.path_template.format(
            datastoreId=quote(datastore_id, safe=""), imageSetId=quote(image_set_id, safe="")
        )

    def signed_headers(self, path: str, body: bytes) -> dict[str, str]:
        """The request's headers, signed now (SigV4 signatures hold for 15 minutes)."""
        if self.credentials is None:
            raise NoCredentials()
        return self.signer.headers(self.credentials.get_frozen_credentials(), path, body)

    def _send(self, datastore_id: str, image_set_id: str, frame_id: str) -> urllib3.BaseHTTPResponse:
        """Take a request from the budget, sign it and send it; the body is left unread."""
        if self.limiter is not None:
            self.limiter.acquire(OPERATION)
        self.adaptive.before_send()
        path = self.path(datastore_id, image_set_id)
        body = json.dumps({"imageFrameId": frame_id}).encode()
        headers = self.signed_headers(path, body)
        self.silence.sent()
        response = self._pool.urlopen(
            "POST", path, body=body, headers=headers, preload_content=False, redirect=False, retries=False
        )
        self.silence.answered()
        self.adaptive.answered(throttled=response.status in THROTTLE_STATUSES)
        return response

    def _unreachable(self, error: urllib3.exceptions.HTTPError) -> EndpointUnreachable:
        """The error for a request that failed on the wire; :class:`EndpointDown` after long silence."""
        if isinstance(error, (urllib3.exceptions.TimeoutError, urllib3.exceptions.NewConnectionError)):
            self.silence.timed_out(error)
        return EndpointUnreachable(f"GetImageFrame to {self.endpoint_url} failed: {error}")

    def get(self, datastore_id: str, image_set_id: str, frame_id: str) -> ImageFrame:
        """One GetImageFrame request: the frame, or a typed error (nothing is retried here)."""
        try:
            response = self._send(datastore_id, image_set_id, frame_id)
            try:
                data = response.read()  # urllib3 raises if the body ends before its Content-Length
            finally:
                response.release_conn()
        except urllib3.exceptions.HTTPError as error:
            raise self._unreachable(error) from error
        if response.status != 200:
            raise self._error(response.status, response.headers, data)
        return ImageFrame(data, response.headers.get("Content-Type", "application/octet-stream"))

    def get_prefix(self, datastore_id: str, image_set_id: str, frame_id: str, stop: PrefixEnd) -> ImageFrame:
        """The start of a frame's body: read until ``stop(received)`` says where to stop.

        ``stop`` sees the bytes received so far and returns the length wanted, ``None`` while it
        cannot tell yet, or ``-1`` to read the whole body. Progressive HTJ2K reads use it
        (:mod:`ahi_torch.fetch`). When the body is cut, the connection is closed rather than
        returned to the pool, since the rest of the body is still on the wire.
        """
        received = bytearray()
        wanted: int | None = None
        whole = False
        try:
            response = self._send(datastore_id, image_set_id, frame_id)
            finished = False
            try:
                if response.status != 200:
                    raise self._error(response.status, response.headers, response.read())
                while wanted is None or len(received) < wanted:
                    chunk = response.read(PREFIX_CHUNK)
                    if not chunk:
                        finished = True
                        break
                    received += chunk
                    if wanted is None and not whole:
                        end = stop(bytes(received))
                        whole = end == -1
                        wanted = None if end is None or whole else end
            finally:
                if finished:
                    response.release_conn()
                else:
                    response.close()
        except urllib3.exceptions.HTTPError as error:
            raise self._unreachable(error) from error
        if wanted is not None and len(received) < wanted:
            raise EndpointUnreachable(f"GetImageFrame to {self.endpoint_url}: the body ended before {wanted} bytes")
        data = bytes(received if wanted is None else received[:wanted])
        return ImageFrame(data, response.headers.get("Content-Type", "application/octet-stream"))

    def _error(self, status: int, headers: Any, body: bytes) -> Exception:
        parsed = self._parser.parse(
            {"status_code": status, "headers": headers, "body": body}, self.operation.output_shape
        )
        parsed.setdefault("ResponseMetadata", {})["HTTPStatusCode"] = status
        if "Error" not in parsed or not parsed["Error"].get("Code"):
            parsed["Error"] = {"Code": str(status), "Message": body[:200].decode("utf-8", "replace")}
        return from_client_error(ClientError(parsed, OPERATION))

    def close(self) -> None:
        self._pool.close()
