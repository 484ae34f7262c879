"""AHIClient: the whole AWS HealthImaging API, Pythonic, paginated, and safe in DataLoader workers.

Method names are boto3's, keyword arguments are boto3's (``datastoreId=...``) so code moves
over unchanged; results are boto3's dicts without ``ResponseMetadata``. Differences that make
it nicer than boto3:

* ``get_image_set_metadata`` returns the parsed (gunzipped) JSON document;
* ``get_image_frame`` returns an :class:`ImageFrame` (bytes plus content type), body read and
  the connection returned to the pool; :attr:`AHIClient.frame_transport` is the lean path for
  frames that :mod:`ahi_torch.fetch` takes (one signed urllib3 request, no botocore overhead);
* ``iter_*`` generators page through every paginated operation;
* ``wait_for_*`` poll until a data store, import job or image set reaches a state (AHI has no
  waiters);
* errors are :mod:`ahi_torch.errors` classes (``except ResourceNotFound``);
* the object pickles (it holds a :class:`ClientConfig`, never a connection) and builds its
  boto3 client lazily in each process, so it works in DataLoader workers under fork and spawn.

>>> from ahi_torch.client import AHIClient, ClientConfig
>>> client = AHIClient(ClientConfig(region="us-east-1"))
>>> for summary in client.iter_image_sets(datastoreId=datastore_id):
...     print(summary["imageSetId"], summary["version"])
"""

from __future__ import annotations

import functools
import gzip
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.session
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    IncompleteReadError,
    NoCredentialsError,
    NoRegionError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from .. import __version__
from ..backoff import pause
from ..counters import COUNTERS
from ..errors import AHIError, EndpointUnreachable, NoCredentials, from_client_error
from ..per_process import PerProcess
from .config import ClientConfig
from .frame_transport import FrameTransport, ImageFrame
from .health import Silence
from .quotas import BURST_SECONDS, node_rates
from .ratelimit import RateLimiter
from .store_budget import StoreBudget
from .waiters import Waiters


def request_budget(config: ClientConfig) -> RateLimiter | StoreBudget | None:
    """The budget a client takes each request from: none, this node's share, or the job's TCPStore."""
    quotas = config.quotas
    if not quotas:
        return None
    if config.rate_limit_store is not None:
        return StoreBudget(quotas, config.rate_limit_store)
    return RateLimiter(node_rates(quotas, config.rate_limit_share), config.rate_limit_dir, BURST_SECONDS)


def _drop_none(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


if TYPE_CHECKING:  # boto3's signatures and response types for the operations AHIClient passes through
    from mypy_boto3_medical_imaging import HealthImagingClient as _BotoSignatures
else:
    _BotoSignatures = object


class AHIClient(Waiters, _BotoSignatures):
    """A fork- and spawn-safe client for all AWS HealthImaging operations.

    Every operation of botocore's service model is a method under boto3's name with boto3's
    keyword arguments (typed by ``mypy-boto3-medical-imaging``), so a new operation or parameter
    reaches users with botocore, without an edit here. What ahi_torch adds: the request budget,
    typed errors, retried truncated bodies, parsed metadata, frames as :class:`ImageFrame`,
    ``iter_*`` paging and ``wait_for_*`` waiters.

    Args:
        config: connection settings; keyword ``overrides`` replace single fields, e.g.
            ``AHIClient(region="us-west-2")``.
    """

    def __init__(self, config: ClientConfig | None = None, **overrides: Any) -> None:
        base = config or ClientConfig()
        self.config = ClientConfig(**{**base.__dict__, **overrides}) if overrides else base
        self._limiter = request_budget(self.config)
        self._handles = PerProcess(self._build)
        self._transport = PerProcess(self._make_transport)
        self._silence = PerProcess(self._make_silence)

    # --- process-local boto3 client -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_limiter": self._limiter}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._limiter = state["_limiter"]
        self._handles = PerProcess(self._build)
        self._transport = PerProcess(self._make_transport)
        self._silence = PerProcess(self._make_silence)

    def _make_silence(self) -> Silence:
        where = self.config.endpoint_url or f"AHI in {self.config.resolved_region}"
        return Silence(where, self.config.endpoint_timeout)

    def __repr__(self) -> str:
        where = self.config.endpoint_url or self.config.resolved_region or "default region"
        return f"AHIClient({where})"

    def _session(self) -> Any:
        c = self.config
        if c.session_factory is not None:
            return c.session_factory()
        return boto3.session.Session(
            profile_name=c.profile,
            aws_access_key_id=c.access_key_id,
            aws_secret_access_key=c.secret_access_key,
            aws_session_token=c.session_token,
        )

    def _build(self) -> tuple[Any, Any]:
        """(boto3 session, medical-imaging client) of this process."""
        c = self.config
        botocore_config = Config(
            region_name=c.resolved_region,
            max_pool_connections=c.max_pool_connections,
            retries={"mode": c.retry_mode, "total_max_attempts": c.max_attempts},
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            tcp_keepalive=True,
            user_agent_extra=f"ahi-torch/{__version__}",
            # The runtime- host prefix only resolves on AWS's own endpoints.
            inject_host_prefix=c.endpoint_url is None,
        )
        session = self._session()
        try:
            client = session.client("medical-imaging", endpoint_url=c.endpoint_url, config=botocore_config)
        except NoRegionError:
            raise AHIError("no AWS region configured: set ClientConfig(region=...) or AWS_REGION") from None
        client.meta.events.register("needs-retry.medical-imaging", self._retry_truncated_body)
        # First, so a dead endpoint ends botocore's own retries too (its handler would retry it 8 times).
        client.meta.events.register_first("needs-retry.medical-imaging", self._give_up_on_silence)
        client.meta.events.register_first("before-send.medical-imaging", self._sending)
        return session, client

    def _sending(self, **_: Any) -> None:
        self._silence.get().sent()

    def _give_up_on_silence(self, response: Any = None, caught_exception: Any = None, **_: Any) -> None:
        """botocore's needs-retry hook: an answer resets the silence; a timeout past the limit ends the call."""
        silence = self._silence.get()
        if response is not None:
            silence.answered()
        elif isinstance(caught_exception, (ConnectTimeoutError, ReadTimeoutError, EndpointConnectionError)):
            silence.timed_out(caught_exception)

    def _retry_truncated_body(
        self, response: Any = None, operation: Any = None, attempts: int = 1, **_: Any
    ) -> float | None:
        """Retry a JSON response whose body ended early.

        botocore parses a cut-short JSON body as an empty success, so a dropped connection would
        silently turn into "no data stores" or "no results". The Content-Length check catches it.
        """
        if response is None or operation is None or operation.has_streaming_output:
            return None
        http = response[0]
        expected = http.headers.get("content-length")
        if http.status_code >= 300 or expected is None or len(http.content) == int(expected):
            return None
        COUNTERS.truncated_bodies += 1
        if attempts >= self.config.max_attempts:
            raise ConnectionClosedError(endpoint_url=self.config.endpoint_url or "AHI")
        return pause(attempts + 1, base=0.05, cap=2.0)

    @property
    def boto3(self) -> Any:
        """The underlying boto3 client of this process (created on first use, again after fork)."""
        return self._handles.get()[1]

    @property
    def connected(self) -> bool:
        """Whether this process has made its boto3 client yet (pickled clients have not)."""
        return self._handles.current() is not None

    def _make_transport(self) -> FrameTransport:
        session, client = self._handles.get()
        c = self.config
        return FrameTransport(
            client,
            session.get_credentials(),
            max_connections=c.max_pool_connections,
            connect_timeout=c.connect_timeout,
            read_timeout=c.read_timeout,
            limiter=self._limiter,
            endpoint_timeout=c.endpoint_timeout,
            silence=self._silence.get(),
        )

    @property
    def frame_transport(self) -> FrameTransport:
        """This process's GetImageFrame transport (one request per call; see :mod:`.frame_transport`)."""
        return self._transport.get()

    def _call(self, operation: str, method: str, **params: Any) -> dict[str, Any]:
        if self._limiter is not None:
            self._limiter.acquire(operation)
        try:
            response: dict[str, Any] = getattr(self.boto3, method)(**_drop_none(params))
        except ClientError as error:
            raise from_client_error(error) from error
        except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError, ConnectionClosedError) as error:
            where = self.config.endpoint_url or f"AHI in {self.config.resolved_region}"
            raise EndpointUnreachable(f"cannot reach {where}: {error}") from error
        except NoCredentialsError:
            raise NoCredentials() from None
        COUNTERS.calls += 1
        COUNTERS.call_retries += int(response.pop("ResponseMetadata", {}).get("RetryAttempts", 0))
        return response

    def _read_payload(self, operation: str, method: str, payload: str, **params: Any) -> tuple[bytes, dict[str, Any]]:
        """Call a streaming operation and read its body, calling again if the body is cut short."""
        for attempt in range(self.config.max_attempts):
            response = self._call(operation, method, **params)
            body = response.pop(payload)
            try:
                return body.read(), response
            except (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError) as error:
                if isinstance(error, ReadTimeoutError):
                    self._silence.get().timed_out(error)
                COUNTERS.stream_retries += 1
                if attempt + 1 >= self.config.max_attempts:
                    raise EndpointUnreachable(
                        f"{operation}: the response body was cut short {attempt + 1} times"
                    ) from error
                time.sleep(pause(attempt + 1, base=0.05, cap=2.0))
            finally:
                body.close()
        raise AssertionError("unreachable")

    def _pages(self, operation: str, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a paginated operation, paged as botocore's paginator model says.

        Each page is one :meth:`_call` (so the request budget and the typed errors apply to
        every page), which is why botocore's own paginator object is not used.
        """
        paging = _paging(operation)
        method = _operations()[operation]
        token: str | None = None
        while True:
            page = self._call(operation, method, **{paging.input_token: token}, **params)
            yield from page.get(paging.result_key, [])
            token = page.get(paging.output_token)
            if not token:
                return

    # --- the 18 operations ------------------------------------------------------------------------

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not attributes: boto3's method names of the AHI operations.
        operation = _methods().get(name)
        if operation is None or name.startswith("_"):
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return functools.partial(self._call, operation, name)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_methods()})

    def iter_datastores(self, **params: Any) -> Iterator[dict[str, Any]]:
        """Every data store summary (``ListDatastores``, page after page)."""
        return self._pages("ListDatastores", **params)

    def iter_import_jobs(self, **params: Any) -> Iterator[dict[str, Any]]:
        """Every import job summary of a data store, newest first (``ListDICOMImportJobs``)."""
        return self._pages("ListDICOMImportJobs", **params)

    def iter_image_sets(self, **params: Any) -> Iterator[dict[str, Any]]:
        """Every image set summary matching ``searchCriteria`` (all of them without criteria)."""
        params["searchCriteria"] = params.get("searchCriteria") or {}
        return self._pages("SearchImageSets", **params)

    def iter_image_set_versions(self, **params: Any) -> Iterator[dict[str, Any]]:
        """Every version of an image set, newest first (``ListImageSetVersions``)."""
        return self._pages("ListImageSetVersions", **params)

    def get_image_set_metadata_bytes(self, *, datastoreId: str, imageSetId: str, versionId: str | None = None) -> bytes:
        """The metadata document as JSON bytes (gunzipped), for callers that cache it."""
        body, _ = self._read_payload(
            "GetImageSetMetadata",
            "get_image_set_metadata",
            "imageSetMetadataBlob",
            datastoreId=datastoreId,
            imageSetId=imageSetId,
            versionId=versionId,
        )
        # botocore does not undo Content-Encoding: gzip; sniff the magic in case a proxy did.
        return gzip.decompress(body) if body[:2] == b"\x1f\x8b" else body

    def get_image_set_metadata(  # type: ignore[override]  # the parsed document, not a stream
        self, *, datastoreId: str, imageSetId: str, versionId: str | None = None
    ) -> dict[str, Any]:
        """The image set's metadata document, parsed (see :mod:`ahi_torch.metadata`)."""
        document: dict[str, Any] = json.loads(
            self.get_image_set_metadata_bytes(datastoreId=datastoreId, imageSetId=imageSetId, versionId=versionId)
        )
        return document

    def get_image_frame(  # type: ignore[override]  # bytes and content type, not a stream
        self, *, datastoreId: str, imageSetId: str, imageFrameInformation: dict[str, str]
    ) -> ImageFrame:
        """One encoded frame: ``ImageFrame(data, content_type)``; decode with :mod:`ahi_torch.codecs`."""
        data, response = self._read_payload(
            "GetImageFrame",
            "get_image_frame",
            "imageFrameBlob",
            datastoreId=datastoreId,
            imageSetId=imageSetId,
            imageFrameInformation=imageFrameInformation,
        )
        return ImageFrame(data, response.get("contentType", "application/octet-stream"))


@dataclass(frozen=True)
class _Paging:
    input_token: str
    output_token: str
    result_key: str


@functools.cache
def _botocore_session() -> Any:
    """One botocore session per process to read the service and paginator models from (loading them is slow)."""
    return botocore.session.get_session()


@functools.cache
def _service_model() -> Any:
    return _botocore_session().get_service_model("medical-imaging")


@functools.cache
def _operations() -> dict[str, str]:
    """Operation name → boto3 method name, for every operation of botocore's model (18 today)."""
    return {name: xform_name(name) for name in _service_model().operation_names}


@functools.cache
def _methods() -> dict[str, str]:
    """boto3 method name → operation name."""
    return {method: name for name, method in _operations().items()}


@functools.cache
def _paging(operation: str) -> _Paging:
    config = _botocore_session().get_paginator_model("medical-imaging").get_paginator(operation)
    return _Paging(str(config["input_token"]), str(config["output_token"]), str(config["result_key"]))


def dicom_updates(updatable: dict[str, Any] | None = None, removable: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build ``updateImageSetMetadataUpdates`` from plain dicts (SchemaVersion added, JSON-encoded).

    >>> dicom_updates(updatable={"Patient": {"DICOM": {"PatientName": "DOE^JANE"}}})
    {'DICOMUpdates': {'updatableAttributes': b'{"SchemaVersion": "1.1", "Patient": ...}'}}
    """
    updates: dict[str, bytes] = {}
    for name, value in (("updatableAttributes", updatable), ("removableAttributes", removable)):
        if value is not None:
            updates[name] = json.dumps({"SchemaVersion": "1.1", **value}).encode()
    return {"DICOMUpdates": updates}
