"""Run the local AHI: uvicorn in a background thread, an embedded moto S3, one data directory.

>>> from ahi_torch.local import LocalAHI
>>> with LocalAHI() as ahi:                      # temporary data dir, random free ports
...     mi = ahi.boto3_client()                  # plain boto3, host-prefix injection off
...     datastore_id = mi.create_datastore(datastoreName="demo")["datastoreId"]
...     client = ahi.client()                    # an ahi_torch AHIClient for the same endpoint
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import uvicorn
from botocore.config import Config

from ..polling import poll_until
from .context import Context, ServiceSettings
from .imports.importer import Importer
from .imports.uploads import ImportResult, import_paths
from .models.store import Store
from .service.app import Guard, ResponseFilter, build_app
from .service.faults import Faults
from .service.security import guards_for

if TYPE_CHECKING:
    from ..client import AHIClient

LOOPBACK = "127.0.0.1"
#: Credentials the local service's clients sign with unless told otherwise.
LOCAL_CREDENTIALS = ("local", "local")


def _free_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this: without it, Nagle plus the client's delayed ACK
    # stalls each small response for 40 ms.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class EmbeddedS3:
    """moto's threaded S3 server on loopback (only the S3 part of moto is used)."""

    def __init__(self, host: str = LOOPBACK, port: int = 0) -> None:
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self._server.start()
        bound_host, bound_port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{bound_host}:{bound_port}"

    def stop(self) -> None:
        self._server.stop()

    @staticmethod
    def read_object(bucket: str, key: str) -> bytes | None:
        """An object's bytes straight from moto's store in this process (None if there is none).

        Import jobs read their input this way when the S3 is embedded: over HTTP, moto's
        Werkzeug server spent more of this process's GIL on each 512 KB GET (an MD5 per read,
        Python-level socket writes) than the import's own work. The job's output still goes
        through the S3 API.
        """
        try:
            found = _moto_s3().get_object(bucket, key)
        except Exception:  # moto raises MissingBucket and similar; the importer reports the file
            return None
        return None if found is None else bytes(found.value)

    @staticmethod
    def list_keys(bucket: str, prefix: str) -> list[str] | None:
        """The keys under ``prefix``, sorted, straight from moto's store (None if there is no such bucket).

        Over HTTP, moto filters the whole bucket again for every page of 1,000 keys and
        serializes each page as XML: listing 4,096 inputs took seconds in which the pool idled.
        """
        s3 = _moto_s3()
        try:
            found = s3.list_objects(s3.get_bucket(bucket), prefix, None, None, None)[0]
        except Exception:  # MissingBucket: the S3 API says so in its own words
            return None
        return [key.name for key in found]


def _moto_s3() -> Any:
    """moto's S3 backend of this process (the embedded server's store)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["aws"]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class LocalAHI:
    """A local AWS HealthImaging service that boto3, the AWS CLI and ahi_torch talk to.

    Args:
        data_dir: where state persists (SQLite + blobs). ``None`` uses a temporary directory
            removed on :meth:`stop`; the same directory again restores every data store,
            image set, version, job and tag.
        port: TCP port; 0 picks a free one.
        host: bind address; loopback unless you mean to expose the service.
        s3: start an embedded S3 (moto) for import jobs. Alternatively give ``s3_endpoint_url``.
        settings: service settings (region, account, transition times, quotas).
        guards, response_filters: extra request hooks.
        credentials: the (access key, secret) clients sign with.
        faults: fault injection (a :class:`Faults` or its text form, see :mod:`.faults`).
        require_signature: verify SigV4 against ``credentials``; by default only when ``host``
            is not loopback.
        region: the region the service answers as (ARNs, the signature scope it accepts);
            overrides ``settings.region``.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        port: int = 0,
        host: str = LOOPBACK,
        s3: bool = True,
        s3_endpoint_url: str | None = None,
        settings: ServiceSettings | None = None,
        guards: Sequence[Guard] = (),
        response_filters: Sequence[ResponseFilter] = (),
        credentials: tuple[str, str] = LOCAL_CREDENTIALS,
        faults: Faults | str | None = None,
        require_signature: bool | None = None,
        region: str | None = None,
    ) -> None:
        self._requested_dir = Path(data_dir) if data_dir is not None else None
        self.port = port
        self.host = host
        self._want_s3 = s3 and s3_endpoint_url is None
        self._s3_endpoint_url = s3_endpoint_url
        self.settings = settings or ServiceSettings()
        if region is not None:
            self.settings = replace(self.settings, region=region)
        self.faults = Faults.parse(faults) if isinstance(faults, str) else faults
        security_guards, security_filters = guards_for(
            host=host,
            faults=self.faults,
            require_signature=require_signature,
            credentials=credentials,
            region=self.settings.region,
        )
        self._guards = [*security_guards, *guards]
        self._response_filters = [*security_filters, *response_filters]
        self.credentials = credentials
        self._temp_dir: str | None = None
        self._s3: EmbeddedS3 | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._importer: Importer | None = None
        self.store: Store | None = None
        self.context: Context | None = None

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> LocalAHI:
        if self._server is not None:
            return self
        if self._requested_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="ahi-local-")
            self.data_dir = Path(self._temp_dir)
        else:
            self.data_dir = self._requested_dir
        if self._want_s3:
            self._s3 = EmbeddedS3()
            self._s3_endpoint_url = self._s3.endpoint_url
        settings = replace(self.settings, s3=replace(self.settings.s3, endpoint_url=self._s3_endpoint_url))
        self.settings = settings
        self.store = Store(self.data_dir)
        self.store.sweep_orphans()
        self.context = Context(settings, self.store)
        if self._s3 is not None:
            self.context.in_process_s3 = self._s3
        self._importer = Importer(self.context)
        self._importer.start()
        app = build_app(self.context, self._guards, self._response_filters)
        sock = _free_socket(self.host, self.port)
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_level="warning",
            log_config=None,  # leave the application's logging alone
            access_log=False,
            lifespan="off",
            timeout_keep_alive=75,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="ahi-local-http", daemon=True
        )
        self._thread.start()
        server, thread = self._server, self._thread

        def started() -> bool:
            if not thread.is_alive():
                raise RuntimeError("the local AHI HTTP server stopped while starting")
            return bool(server.started)

        poll_until(started, timeout=30, what="the local AHI HTTP server to start", interval=0.01, max_interval=0.1)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=15)
            self._server = None
        if self._importer is not None:
            self._importer.stop()
            self._importer = None
        if self.store is not None:
            self.store.close()
            self.store = None
        if self._s3 is not None:
            self._s3.stop()
            self._s3 = None
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> LocalAHI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        """Block until interrupted or terminated (used by ``ahi-torch local serve``).

        SIGTERM stops the service as Ctrl-C does, so its import pool ends with it.
        """
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _interrupt)
        self.start()
        try:
            while self._thread is not None and self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    # --- endpoints and clients ----------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = LOOPBACK
        return f"http://{host}:{self.port}"

    @property
    def s3_endpoint_url(self) -> str | None:
        return self._s3_endpoint_url

    def boto3_client(self, **config: Any) -> Any:
        """A plain boto3 ``medical-imaging`` client for this service (host-prefix injection off)."""
        return boto3.session.Session().client(
            "medical-imaging",
            endpoint_url=self.endpoint_url,
            region_name=self.settings.region,
            aws_access_key_id=self.credentials[0],
            aws_secret_access_key=self.credentials[1],
            config=Config(inject_host_prefix=False, **config),
        )

    def s3_client(self) -> Any:
        """A boto3 S3 client for the embedded S3."""
        if self._s3_endpoint_url is None:
            raise RuntimeError("this LocalAHI has no S3 endpoint")
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self._s3_endpoint_url,
            region_name=self.settings.s3.region,
            aws_access_key_id=self.settings.s3.access_key_id,
            aws_secret_access_key=self.settings.s3.secret_access_key,
        )

    def client(self, **options: Any) -> AHIClient:
        """An :class:`ahi_torch.client.AHIClient` configured for this service."""
        from ..client import AHIClient, ClientConfig

        config = ClientConfig(
            region=self.settings.region,
            endpoint_url=self.endpoint_url,
            access_key_id=self.credentials[0],
            secret_access_key=self.credentials[1],
            **options,
        )
        return AHIClient(config)

    def request_counts(self) -> dict[str, int]:
        """Requests received per operation since start (the benchmarks and the demo read these)."""
        return self.context.request_counts() if self.context is not None else {}

    def request_timeline(self, operation: str) -> dict[int, int]:
        """Requests of ``operation`` received in each wall-clock second since start."""
        return self.context.request_timeline(operation) if self.context is not None else {}

    def frame_request_counts(self) -> dict[str, int]:
        """GetImageFrame requests per frame ID since start, including throttled and failed ones."""
        return self.context.frame_request_counts() if self.context is not None else {}

    # --- conveniences ------------------------------------------------------------------------------

    def create_datastore(self, name: str = "ahi-torch", storage_format: str | None = None) -> str:
        """Create a data store, wait until it is ACTIVE, and return its ID."""
        mi = self.boto3_client()
        kwargs = {"losslessStorageFormat": storage_format} if storage_format else {}
        datastore_id: str = mi.create_datastore(datastoreName=name, **kwargs)["datastoreId"]
        poll_until(
            lambda: mi.get_datastore(datastoreId=datastore_id)["datastoreProperties"]["datastoreStatus"] == "ACTIVE",
            timeout=30,
            what=f"data store {datastore_id} to become ACTIVE",
            interval=0.02,
        )
        return datastore_id

    def import_dicom(
        self,
        paths: str | Path | Sequence[str | Path],
        datastore_id: str | None = None,
        *,
        bucket: str = "ahi-torch-import",
        progress: bool = False,
        timeout: float = 3600.0,
    ) -> ImportResult:
        """Upload DICOM files (or folders of them) to the embedded S3 and import them for real.

        Creates a data store when ``datastore_id`` is None. Returns the job's manifests.
        """
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        datastore_id = datastore_id or self.create_datastore()
        return import_paths(
            self.boto3_client(),
            self.s3_client(),
            datastore_id,
            items,
            bucket=bucket,
            progress=progress,
            timeout=timeout,
        )

    def environment(self) -> dict[str, str]:
        """Environment variables that point the AWS CLI and SDKs at this service."""
        return {
            "AWS_ENDPOINT_URL_MEDICAL_IMAGING": self.endpoint_url,
            "AWS_DISABLE_HOST_PREFIX_INJECTION": "true",
            "AWS_ACCESS_KEY_ID": self.credentials[0],
            "AWS_SECRET_ACCESS_KEY": self.credentials[1],
            "AWS_DEFAULT_REGION": self.settings.region,
        }
