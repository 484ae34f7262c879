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

import gzip
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
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
from ..errors import AHIError, EndpointUnreachable, from_client_error
from ..per_process import PerProcess
from .config import ClientConfig
from .frame_transport import FrameTransport, ImageFrame
from .quotas import BURST_SECONDS, node_rates
from .ratelimit import RateLimiter
from .store_budget import StoreBudget
from .waiters import Waiters


@dataclass
class ClientCounters:
    """Per-process call statistics (each DataLoader worker keeps its own)."""

    calls: int = 0
    retries: int = 0
    stream_retries: int = 0
    truncated_bodies: int = 0


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


class AHIClient(Waiters):
    """A fork- and spawn-safe client for all 18 AWS HealthImaging operations.

    Args:
        config: connection settings; keyword ``overrides`` replace single fields, e.g.
            ``AHIClient(region="us-west-2")``.
    """

    def __init__(self, config: ClientConfig | None = None, **overrides: Any) -> None:
        base = config or ClientConfig()
        self.config = ClientConfig(**{**base.__dict__, **overrides}) if overrides else base
        self.counters = ClientCounters()
        self._limiter = request_budget(self.config)
        self._handles = PerProcess(self._build)
        self._transport = PerProcess(self._make_transport)

    # --- process-local boto3 client -------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "_limiter": self._limiter}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.config = state["config"]
        self._limiter = state["_limiter"]
        self.counters = ClientCounters()
        self._handles = PerProcess(self._build)
        self._transport = PerProcess(self._make_transport)

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
        return session, client

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
        self.counters.truncated_bodies += 1
        if attempts >= self.config.max_attempts:
            raise ConnectionClosedError(endpoint_url=self.config.endpoint_url or "AHI")
        return float(min(2.0, 0.05 * 2**attempts) * random.uniform(0.5, 1.0))

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
            raise AHIError("no AWS credentials found: configure a profile, keys or a session_factory") from None
        self.counters.calls += 1
        self.counters.retries += int(response.pop("ResponseMetadata", {}).get("RetryAttempts", 0))
        return response

    def _read_payload(self, operation: str, method: str, payload: str, **params: Any) -> tuple[bytes, dict[str, Any]]:
        """Call a streaming operation and read its body, calling again if the body is cut short."""
        for attempt in range(self.config.max_attempts):
            response = self._call(operation, method, **params)
            body = response.pop(payload)
            try:
                return body.read(), response
            except (ResponseStreamingError, IncompleteReadError, ReadTimeoutError, ConnectionClosedError) as error:
                self.counters.stream_retries += 1
                if attempt + 1 >= self.config.max_attempts:
                    raise EndpointUnreachable(
                        f"{operation}: the response body was cut short {attempt + 1} times"
                    ) from error
                time.sleep(min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
            finally:
                body.close()
        raise AssertionError("unreachable")

    def _pages(self, operation: str, method: str, result_key: str, **params: Any) -> Iterator[dict[str, Any]]:
        token: str | None = None
        while True:
            page = self._call(operation, method, nextToken=token, **params)
            yield from page.get(result_key, [])
            token = page.get("nextToken")
            if not token:
                return

    # --- data stores ------------------------------------------------------------------------------

    def create_datastore(
        self,
        *,
        datastoreName: str | None = None,
        clientToken: str | None = None,
        tags: dict[str, str] | None = None,
        kmsKeyArn: str | None = None,
        lambdaAuthorizerArn: str | None = None,
        losslessStorageFormat: str | None = None,
    ) -> dict[str, Any]:
        """Create a data store; returns ``{"datastoreId", "datastoreStatus": "CREATING"}``."""
        return self._call(
            "CreateDatastore",
            "create_datastore",
            datastoreName=datastoreName,
            clientToken=clientToken,
            tags=tags,
            kmsKeyArn=kmsKeyArn,
            lambdaAuthorizerArn=lambdaAuthorizerArn,
            losslessStorageFormat=losslessStorageFormat,
        )

    def get_datastore(self, *, datastoreId: str) -> dict[str, Any]:
        """Data store properties: ``{"datastoreProperties": {...}}``."""
        return self._call("GetDatastore", "get_datastore", datastoreId=datastoreId)

    def list_datastores(
        self, *, datastoreStatus: str | None = None, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        """One page of data store summaries; see :meth:`iter_datastores` for all of them."""
        return self._call(
            "ListDatastores",
            "list_datastores",
            datastoreStatus=datastoreStatus,
            nextToken=nextToken,
            maxResults=maxResults,
        )

    def iter_datastores(
        self, *, datastoreStatus: str | None = None, maxResults: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every data store summary, page after page."""
        return self._pages(
            "ListDatastores",
            "list_datastores",
            "datastoreSummaries",
            datastoreStatus=datastoreStatus,
            maxResults=maxResults,
        )

    def delete_datastore(self, *, datastoreId: str) -> dict[str, Any]:
        """Delete an empty data store; returns ``{"datastoreId", "datastoreStatus": "DELETING"}``."""
        return self._call("DeleteDatastore", "delete_datastore", datastoreId=datastoreId)

    # --- import jobs ------------------------------------------------------------------------------

    def start_dicom_import_job(
        self,
        *,
        datastoreId: str,
        dataAccessRoleArn: str,
        inputS3Uri: str,
        outputS3Uri: str,
        jobName: str | None = None,
        clientToken: str | None = None,
        inputOwnerAccountId: str | None = None,
        importConfiguration: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start importing the DICOM P10 files under ``inputS3Uri``; returns the job ID."""
        return self._call(
            "StartDICOMImportJob",
            "start_dicom_import_job",
            datastoreId=datastoreId,
            dataAccessRoleArn=dataAccessRoleArn,
            inputS3Uri=inputS3Uri,
            outputS3Uri=outputS3Uri,
            jobName=jobName,
            clientToken=clientToken,
            inputOwnerAccountId=inputOwnerAccountId,
            importConfiguration=importConfiguration,
        )

    def get_dicom_import_job(self, *, datastoreId: str, jobId: str) -> dict[str, Any]:
        """Import job properties: ``{"jobProperties": {...}}``."""
        return self._call("GetDICOMImportJob", "get_dicom_import_job", datastoreId=datastoreId, jobId=jobId)

    def list_dicom_import_jobs(
        self,
        *,
        datastoreId: str,
        jobStatus: str | None = None,
        nextToken: str | None = None,
        maxResults: int | None = None,
    ) -> dict[str, Any]:
        """One page of import job summaries; see :meth:`iter_import_jobs`."""
        return self._call(
            "ListDICOMImportJobs",
            "list_dicom_import_jobs",
            datastoreId=datastoreId,
            jobStatus=jobStatus,
            nextToken=nextToken,
            maxResults=maxResults,
        )

    def iter_import_jobs(
        self, *, datastoreId: str, jobStatus: str | None = None, maxResults: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every import job summary of a data store, newest first."""
        return self._pages(
            "ListDICOMImportJobs",
            "list_dicom_import_jobs",
            "jobSummaries",
            datastoreId=datastoreId,
            jobStatus=jobStatus,
            maxResults=maxResults,
        )

    # --- image sets -------------------------------------------------------------------------------

    def search_image_sets(
        self,
        *,
        datastoreId: str,
        searchCriteria: dict[str, Any] | None = None,
        maxResults: int | None = None,
        nextToken: str | None = None,
    ) -> dict[str, Any]:
        """One page of search results; see :meth:`iter_image_sets` and :mod:`ahi_torch.index.search`."""
        return self._call(
            "SearchImageSets",
            "search_image_sets",
            datastoreId=datastoreId,
            searchCriteria=searchCriteria,
            maxResults=maxResults,
            nextToken=nextToken,
        )

    def iter_image_sets(
        self, *, datastoreId: str, searchCriteria: dict[str, Any] | None = None, maxResults: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every image set summary matching ``searchCriteria`` (all of them without criteria)."""
        return self._pages(
            "SearchImageSets",
            "search_image_sets",
            "imageSetsMetadataSummaries",
            datastoreId=datastoreId,
            searchCriteria=searchCriteria if searchCriteria is not None else {},
            maxResults=maxResults,
        )

    def get_image_set(self, *, datastoreId: str, imageSetId: str, versionId: str | None = None) -> dict[str, Any]:
        """Image set properties (state, workflow status, version, timestamps)."""
        return self._call(
            "GetImageSet", "get_image_set", datastoreId=datastoreId, imageSetId=imageSetId, versionId=versionId
        )

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

    def get_image_set_metadata(
        self, *, datastoreId: str, imageSetId: str, versionId: str | None = None
    ) -> dict[str, Any]:
        """The image set's metadata document, parsed (see :mod:`ahi_torch.metadata`)."""
        document: dict[str, Any] = json.loads(
            self.get_image_set_metadata_bytes(datastoreId=datastoreId, imageSetId=imageSetId, versionId=versionId)
        )
        return document

    def get_image_frame(
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

    def list_image_set_versions(
        self, *, datastoreId: str, imageSetId: str, nextToken: str | None = None, maxResults: int | None = None
    ) -> dict[str, Any]:
        """One page of an image set's versions, newest first; see :meth:`iter_image_set_versions`."""
        return self._call(
            "ListImageSetVersions",
            "list_image_set_versions",
            datastoreId=datastoreId,
            imageSetId=imageSetId,
            nextToken=nextToken,
            maxResults=maxResults,
        )

    def iter_image_set_versions(
        self, *, datastoreId: str, imageSetId: str, maxResults: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Every version of an image set, newest first."""
        return self._pages(
            "ListImageSetVersions",
            "list_image_set_versions",
            "imageSetPropertiesList",
            datastoreId=datastoreId,
            imageSetId=imageSetId,
            maxResults=maxResults,
        )

    def update_image_set_metadata(
        self,
        *,
        datastoreId: str,
        imageSetId: str,
        latestVersionId: str,
        updateImageSetMetadataUpdates: dict[str, Any],
        force: bool | None = None,
        includeStudyImageSets: bool | None = None,
    ) -> dict[str, Any]:
        """Update, remove or revert metadata; creates a new version. See :func:`dicom_updates`."""
        return self._call(
            "UpdateImageSetMetadata",
            "update_image_set_metadata",
            datastoreId=datastoreId,
            imageSetId=imageSetId,
            latestVersionId=latestVersionId,
            updateImageSetMetadataUpdates=updateImageSetMetadataUpdates,
            force=force,
            includeStudyImageSets=includeStudyImageSets,
        )

    def copy_image_set(
        self,
        *,
        datastoreId: str,
        sourceImageSetId: str,
        copyImageSetInformation: dict[str, Any],
        force: bool | None = None,
        promoteToPrimary: bool | None = None,
    ) -> dict[str, Any]:
        """Copy an image set (or selected instances) to a new or an existing image set."""
        return self._call(
            "CopyImageSet",
            "copy_image_set",
            datastoreId=datastoreId,
            sourceImageSetId=sourceImageSetId,
            copyImageSetInformation=copyImageSetInformation,
            force=force,
            promoteToPrimary=promoteToPrimary,
        )

    def delete_image_set(self, *, datastoreId: str, imageSetId: str) -> dict[str, Any]:
        """Delete an image set (asynchronous: LOCKED/DELETING, then DELETED)."""
        return self._call("DeleteImageSet", "delete_image_set", datastoreId=datastoreId, imageSetId=imageSetId)

    # --- tags -------------------------------------------------------------------------------------

    def tag_resource(self, *, resourceArn: str, tags: dict[str, str]) -> dict[str, Any]:
        """Add or replace tags on a data store or image set ARN."""
        return self._call("TagResource", "tag_resource", resourceArn=resourceArn, tags=tags)

    def untag_resource(self, *, resourceArn: str, tagKeys: list[str]) -> dict[str, Any]:
        """Remove tags by key."""
        return self._call("UntagResource", "untag_resource", resourceArn=resourceArn, tagKeys=tagKeys)

    def list_tags_for_resource(self, *, resourceArn: str) -> dict[str, Any]:
        """``{"tags": {...}}`` of a data store or image set ARN."""
        return self._call("ListTagsForResource", "list_tags_for_resource", resourceArn=resourceArn)


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
