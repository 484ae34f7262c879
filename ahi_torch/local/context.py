"""Settings, quotas and shared state of one local AHI service, and the operation handler registry."""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import ResourceNotFoundException
from .models.store import Store, new_id


@dataclass(frozen=True)
class Quotas:
    """Service quotas AHI enforces; exceeding one raises ServiceQuotaExceededException (HTTP 402)."""

    max_datastores: int = 10
    max_concurrent_import_jobs: int = 100
    max_files_per_import: int = 5000
    max_frames_per_copy: int = 1000
    max_update_payload_bytes: int = 10 * 1024
    max_tags_per_resource: int = 50


class InProcessS3(Protocol):
    """An S3 that runs inside the service's process (:class:`.server.EmbeddedS3`), read without HTTP.

    Each method answers ``None`` where it cannot (no such bucket or object): the caller then asks
    over the S3 API, which reports the problem as S3 does.
    """

    def read_object(self, bucket: str, key: str) -> bytes | None: ...

    def list_keys(self, bucket: str, prefix: str) -> list[str] | None: ...


@dataclass(frozen=True)
class S3Settings:
    """Where import jobs read DICOM from and write their output (any S3-compatible endpoint)."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    access_key_id: str = "local"
    secret_access_key: str = "local"


@dataclass(frozen=True)
class ServiceSettings:
    """How the local service behaves.

    ``transition_seconds`` is how long data stores stay CREATING/DELETING and image sets stay
    LOCKED after an update, copy or delete, as AHI's asynchronous workflows do; writes during
    that window get ConflictException. Set it to 0 for instant transitions.
    """

    region: str = "us-east-1"
    account_id: str = "123456789012"
    transition_seconds: float = 0.2
    import_workers: int = 2
    #: Processes that parse and transcode an import's files: 1 examines them in the importer's
    #: own threads (the default: a LocalAHI embedded in a script must not start processes that
    #: re-import the script's __main__); 0 is one per core, as ``ahi-torch local serve`` runs.
    #: Jobs of fewer than ``import_pool_min_files`` files always use the threads.
    import_processes: int = 1
    import_pool_min_files: int = 32
    quotas: Quotas = field(default_factory=Quotas)
    s3: S3Settings = field(default_factory=S3Settings)
    check_responses: bool = False


class JobQueue:
    """Import jobs waiting to run: StartDICOMImportJob submits, the importer's workers take.

    The context holds the queue and the importer is handed the context, so neither module
    imports the other.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()

    def submit(self, job_id: str) -> None:
        self._queue.put(job_id)

    def take(self) -> str | None:
        """The next job ID, waiting for one; None tells a worker to stop."""
        return self._queue.get()

    def release(self, workers: int) -> None:
        """Wake ``workers`` waiting workers with None so they stop."""
        for _ in range(workers):
            self._queue.put(None)


class Context:
    """What every handler needs: settings, the store, the clock and the import job queue."""

    def __init__(self, settings: ServiceSettings, store: Store, jobs: JobQueue | None = None) -> None:
        self.settings = settings
        self.store = store
        self.jobs = jobs or JobQueue()
        self.requests: Counter[str] = Counter()
        self.frame_requests: Counter[str] = Counter()
        self.request_seconds: Counter[tuple[str, int]] = Counter()
        self._requests_lock = threading.Lock()
        #: The service's own S3 when it embeds one: import jobs list and read their input from it directly.
        self.in_process_s3: InProcessS3 | None = None

    def count_request(self, operation: str, frame_id: str | None = None) -> None:
        """Count a request as it arrives (before signature checks and injected faults)."""
        second = int(time.time())
        with self._requests_lock:
            self.requests[operation] += 1
            self.request_seconds[(operation, second)] += 1
            if frame_id is not None:
                self.frame_requests[frame_id] += 1

    def request_counts(self) -> dict[str, int]:
        with self._requests_lock:
            return dict(self.requests)

    def request_timeline(self, operation: str) -> dict[int, int]:
        """Requests of ``operation`` received in each wall-clock second (epoch seconds)."""
        with self._requests_lock:
            return {second: n for (name, second), n in self.request_seconds.items() if name == operation}

    def frame_request_counts(self) -> dict[str, int]:
        """GetImageFrame requests per image frame ID, failed and injected-fault ones included."""
        with self._requests_lock:
            return dict(self.frame_requests)

    @staticmethod
    def now() -> float:
        # Millisecond precision, as the API reports: a timestamp read back and used in a
        # BETWEEN filter must still match the record it came from.
        return round(time.time(), 3)

    new_id = staticmethod(new_id)

    def datastore_arn(self, datastore_id: str) -> str:
        s = self.settings
        return f"arn:aws:medical-imaging:{s.region}:{s.account_id}:datastore/{datastore_id}"

    def image_set_arn(self, datastore_id: str, image_set_id: str) -> str:
        return f"{self.datastore_arn(datastore_id)}/imageset/{image_set_id}"

    def parse_arn(self, arn: str) -> tuple[str, str | None]:
        """(datastore ID, image set ID or None) of an ARN in this region and account."""
        found = re.fullmatch(
            r"arn:aws[a-z-]*:medical-imaging:([a-z0-9-]+):(\d{12}):datastore/([0-9a-z]{32})(?:/imageset/([0-9a-z]{32}))?",
            arn,
        )
        if not found or found.group(1) != self.settings.region or found.group(2) != self.settings.account_id:
            raise ResourceNotFoundException(f"Resource {arn} not found")
        return found.group(3), found.group(4)


Handler = Callable[[Context, dict[str, Any]], dict[str, Any]]
HANDLERS: dict[str, Handler] = {}


def handles(operation: str) -> Callable[[Handler], Handler]:
    """Register a function as the handler of one AHI operation."""

    def register(func: Handler) -> Handler:
        HANDLERS[operation] = func
        return func

    return register


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)
