"""Reliability: an epoch under injected faults, timeouts, shared rate limits, truncated bodies."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from torch.utils.data import DataLoader

from ahi_torch.cache import FrameCache
from ahi_torch.client import AHIClient, RateLimiter
from ahi_torch.counters import counting
from ahi_torch.datasets import ErrorPolicy, FailureLog, FrameDataset
from ahi_torch.errors import ConfigError, EndpointUnreachable, SampleError
from ahi_torch.fetch import FrameFetcher, RetryPolicy
from ahi_torch.index import build_index
from ahi_torch.local import LocalAHI
from ahi_torch.local.service.faults import Faults
from ahi_torch.sample.synthetic import SeriesSpec, write_series

from ..conftest import ImportedData

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own

FAULTS = (
    "*:throttle=0.10,error=0.05,drop=0.01;GetImageFrame:throttle=0.10,error=0.05,drop=0.01,truncate=0.005,bitflip=0.005"
)


def _write_sources(root: Path, specs: list[SeriesSpec]) -> dict[str, np.ndarray]:
    """Write each series under ``root``; pydicom's pixels by SOPInstanceUID, to compare fetched frames with."""
    sources = {}
    for spec in specs:
        for path in write_series(root / spec.series_key, spec):
            ds = pydicom.dcmread(path)
            sources[ds.SOPInstanceUID] = ds.pixel_array
    return sources


def test_epoch_survives_injected_faults(tmp_path: Path) -> None:
    sources = _write_sources(
        tmp_path / "dicom",
        [
            SeriesSpec(patient_id=f"F{n:02d}", study_key="s", series_key=f"f{n}", slices=3, rows=16, columns=16, seed=n)
            for n in range(20)
        ],
    )
    faults = Faults(seed=2024)
    with LocalAHI(faults=faults) as ahi:
        result = ahi.import_dicom(tmp_path / "dicom")
        assert len(result.image_set_ids) == 20
        faults.specs.update(Faults.parse(FAULTS).specs)
        before = ahi.request_counts()
        client = ahi.client(max_attempts=10)
        index = build_index(client, result.datastore_id, progress=False)
        assert len(index) == 60
        log = tmp_path / "failures.jsonl"
        dataset = FrameDataset(
            index,
            FrameFetcher(client, cache=FrameCache(tmp_path / "cache")),
            rescale=False,
            dtype=None,
            error_policy=ErrorPolicy("skip", failure_log=str(log)),
        )
        exact = 0
        for batch in DataLoader(dataset, batch_size=6, num_workers=2):
            for image, sop in zip(batch["image"], batch["meta"]["sop_instance_uid"], strict=True):
                np.testing.assert_array_equal(image[0].numpy(), sources[sop])
                exact += 1
        after = ahi.request_counts()
        frame_requests = after["GetImageFrame"] - before.get("GetImageFrame", 0)
        failures = FailureLog.read(log)
        injected = dict(faults.injected)
        print(
            f"\nfaults injected {injected}; GetImageFrame requests {frame_requests} for 60 frames "
            f"({frame_requests - 60} retried); items survived pixel-exact {exact}/60; reported failures {len(failures)}"
        )
        assert exact == 60
        assert sum(injected.values()) > 0 and injected.get("throttle", 0) > 0
        assert frame_requests > 60, "faults on GetImageFrame forced retries"
        # Every fault here is transient: the retries absorb them all, so no sample was replaced.
        assert failures == [], failures


def test_stuck_requests_time_out(tmp_path: Path) -> None:
    with LocalAHI(faults="GetDatastore:latency=3") as ahi:
        datastore_id = ahi.boto3_client().create_datastore(datastoreName="slow")["datastoreId"]
        client = ahi.client(read_timeout=0.3, max_attempts=2)
        with pytest.raises(EndpointUnreachable, match=r"timed out|Read timeout"):
            client.get_datastore(datastoreId=datastore_id)


def test_truncated_json_bodies_are_retried_not_swallowed() -> None:
    """botocore parses a cut-short JSON body as an empty success; AHIClient retries instead."""
    faults = Faults.parse("ListDatastores:drop=0.5", seed=3)
    with LocalAHI(faults=faults) as ahi:
        ahi.create_datastore("one")
        plain = ahi.boto3_client(retries={"max_attempts": 1})
        client = ahi.client()
        empties = 0
        with counting() as counted:
            for _ in range(12):
                empties += "datastoreSummaries" not in plain.list_datastores()
                assert len(client.list_datastores()["datastoreSummaries"]) == 1
        assert faults.injected["drop"] > 0 and empties > 0, "plain boto3 really does return nothing"
        assert counted.truncated_bodies > 0 and counted.calls == 12


def _record_grants(limiter: RateLimiter, count: int, start: mp.synchronize.Barrier, out: str) -> None:
    start.wait()
    granted = []
    for _ in range(count):
        limiter.acquire("GetImageFrame")
        granted.append(time.time())
    Path(out).write_text("\n".join(map(str, granted)))


def _take_tokens(directory: str, count: int, start: mp.synchronize.Barrier, out: str) -> None:
    _record_grants(RateLimiter({"GetImageFrame": 40.0}, directory), count, start, out)


def _assert_one_budget(outs: list[Path], windows: tuple[float, ...]) -> list[float]:
    """At 40/s with a burst of 40, at most 40 + 40 x t grants in any first t seconds, whoever took them."""
    grants = sorted(float(t) for out in outs for t in out.read_text().split())
    for window in windows:
        within = sum(1 for t in grants if t - grants[0] <= window)
        # Separate budgets would grant 80 at once; load on the machine can only delay grants.
        assert within <= 40 + 40 * window + 2, f"{within} grants in the first {window} s"
    return grants


def test_rate_limit_is_shared_by_processes(tmp_path: Path) -> None:
    """Two processes starting together at 40/s (burst 40): at most 40 + 40 x t grants in any first t seconds."""
    context = mp.get_context("spawn")
    start = context.Barrier(2)
    outs = [tmp_path / f"grants{k}.txt" for k in range(2)]
    workers = [
        context.Process(target=_take_tokens, args=(str(tmp_path / "buckets"), 50, start, str(out))) for out in outs
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(_assert_one_budget(outs, (0.05, 0.25, 0.5, 1.0))) == 100
    unlimited = RateLimiter({}, tmp_path)
    assert unlimited.acquire("GetImageFrame") == 0.0


def test_client_applies_configured_rate_limits(tmp_path: Path) -> None:
    with LocalAHI() as ahi:
        client = ahi.client(rate_limits={"ListDatastores": 20.0}, rate_limit_dir=str(tmp_path))
        started = time.monotonic()
        for _ in range(60):  # AHI's burst (two seconds' worth: 40), then 20 more at 20/s
            client.list_datastores()
        assert time.monotonic() - started >= 0.95
        with pytest.raises(ConfigError):
            AHIClient(ahi.client().config, rate_limits={"ListDatastores": 0.0})


def test_fault_specs_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown fault kind"):
        Faults.parse("GetImageFrame:explode=0.1")
    with pytest.raises(ConfigError, match="between 0 and 1"):
        Faults.parse("*:throttle=1.5")


def test_forked_workers_do_not_share_the_parents_lock(tmp_path: Path) -> None:
    """flock belongs to an open file: a forked child must open its own, or parent and children never exclude."""
    limiter = RateLimiter({"GetImageFrame": 40.0}, tmp_path / "buckets")
    limiter.acquire("GetImageFrame")  # the parent opens the bucket file before forking
    context = mp.get_context("fork")
    start = context.Barrier(2)
    outs = [tmp_path / f"grants{k}.txt" for k in range(2)]
    workers = [context.Process(target=_record_grants, args=(limiter, 40, start, str(out))) for out in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert len(_assert_one_budget(outs, (0.25, 0.5))) == 80


def test_bucket_files_are_private_and_reused(tmp_path: Path) -> None:
    import os
    import stat
    import tempfile

    from ahi_torch.client.ratelimit import default_directory

    assert default_directory() == Path(tempfile.gettempdir()) / f"ahi-torch-ratelimit-{os.getuid()}"
    limiter = RateLimiter({"GetImageFrame": 1e6}, tmp_path / "buckets")
    limiter.acquire("GetImageFrame")
    open_files = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        limiter.acquire("GetImageFrame")
    assert len(os.listdir("/proc/self/fd")) == open_files, "one open bucket file per operation, not one per call"
    assert stat.S_IMODE((tmp_path / "buckets").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "buckets" / "GetImageFrame.bucket").stat().st_mode) == 0o600


def _served_exactly(loader: DataLoader, sources: dict[str, np.ndarray]) -> int:  # type: ignore[type-arg]
    """How many frames the loader served, each checked bit for bit against its source file's pixels."""
    served = 0
    for batch in loader:
        for image, sop in zip(batch["image"], batch["meta"]["sop_instance_uid"], strict=True):
            np.testing.assert_array_equal(image[0].numpy(), sources[sop])
            served += 1
    return served


def _requests_per_frame(ahi: LocalAHI, index) -> list[int]:  # type: ignore[no-untyped-def]
    """GetImageFrame requests the local AHI received for each frame of ``index``."""
    counts = ahi.frame_request_counts()
    return [counts.get(frame_id, 0) for frame_id in index.texts("frame_id")]


FRAME_FAULTS = "GetImageFrame:throttle=0.10,error=0.05,drop=0.02,bitflip=0.02"


def test_one_retry_layer_bounds_requests_per_frame(tmp_path: Path) -> None:
    """Transient faults are retried once, in the fetch layer: bit-exact pixels, <= 1.25 requests per frame."""
    sources = _write_sources(
        tmp_path / "dicom",
        [
            SeriesSpec(patient_id=f"R{n:02d}", study_key="r", series_key=f"r{n}", slices=16, rows=48, columns=48)
            for n in range(12)
        ],
    )
    faults = Faults(seed=7)
    with LocalAHI(faults=faults) as ahi:
        result = ahi.import_dicom(tmp_path / "dicom")
        client = ahi.client()
        index = build_index(client, result.datastore_id, progress=False)
        assert len(index) == 192
        faults.specs.update(Faults.parse(FRAME_FAULTS).specs)
        dataset = FrameDataset(index, client, rescale=False, dtype=None)
        exact = _served_exactly(DataLoader(dataset, batch_size=16, num_workers=2), sources)
        per_frame = _requests_per_frame(ahi, index)
        injected = dict(faults.injected)
        print(f"\nfaults {injected}; {sum(per_frame)} GetImageFrame requests for {len(per_frame)} frames")
        assert exact == 192
        assert all(kind in injected for kind in ("throttle", "error", "drop", "bitflip")), injected
        assert sum(per_frame) / len(per_frame) <= 1.25, "each fault costs one more request, not a cascade"
        # Throttles do not use up attempts (they slow the rate instead); every other fault does.
        assert min(per_frame) >= 1 and max(per_frame) <= RetryPolicy().max_attempts + injected["throttle"]

        # A frame that can never succeed costs exactly the budget, whatever the layers above do.
        frame_id = index.texts("frame_id")[5]
        path = ahi.store.frame_path(frame_id)
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) - 30] ^= 0x5A
        path.write_bytes(bytes(damaged))
        faults.specs.clear()
        before = ahi.frame_request_counts()[frame_id]
        retrying = FrameDataset(index, client, error_policy=ErrorPolicy("retry", retries=3, backoff=0.001))
        with pytest.raises(SampleError, match="after 4 attempts"):
            retrying[5]
        assert ahi.frame_request_counts()[frame_id] - before == RetryPolicy().max_attempts == 4


def test_sustained_throttling_delivers_every_frame_at_the_granted_rate(tmp_path: Path) -> None:
    """Issue 22.10: at 50 % throttling 3 of 100 frames failed after 4 attempts; throttles now slow down instead."""
    specs = [
        SeriesSpec(patient_id=f"T{n}", study_key="t", series_key=f"t{n}", slices=25, rows=16, columns=16)
        for n in range(4)
    ]
    sources = _write_sources(tmp_path / "dicom", specs)
    faults = Faults(seed=11)
    with LocalAHI(faults=faults) as ahi:
        result = ahi.import_dicom(tmp_path / "dicom")
        client = ahi.client()
        index = build_index(client, result.datastore_id, progress=False)
        faults.specs.update(Faults.parse("GetImageFrame:throttle=0.5").specs)
        dataset = FrameDataset(index, FrameFetcher(client, max_workers=4), rescale=False, dtype=None)
        served = _served_exactly(DataLoader(dataset, batch_size=10, num_workers=0), sources)
        per_frame = _requests_per_frame(ahi, index)
        print(f"\n{sum(per_frame)} requests for {len(per_frame)} frames, {faults.injected['throttle']} throttled")
        assert served == len(index) == 100, "every frame arrives"
        assert faults.injected["throttle"] > 30
        assert sum(per_frame) / len(per_frame) <= 2.2
        assert client.frame_transport.adaptive.rate is not None, "throttles lowered the send rate"


class _SilentServer:
    """Accepts TCP connections and never answers: a hung service behind a live port."""

    def __init__(self) -> None:
        import socket
        import threading

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen(128)
        self.port = self.socket.getsockname()[1]
        self.connections: list[object] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.connections.append(connection)

    def close(self) -> None:
        self.socket.close()
        for connection in self.connections:
            connection.close()  # type: ignore[attr-defined]


def test_a_dead_endpoint_fails_fast_and_is_never_a_reason_to_replace_samples(
    ahi: LocalAHI, synthetic_import: ImportedData
) -> None:
    """Issue 22.11: 8 read timeouts before build_index failed; `skip` tried 15 replacements x 4 attempts."""
    from ahi_torch.errors import EndpointDown

    index = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    silent = _SilentServer()
    try:
        dead = AHIClient(
            ahi.client().config,
            endpoint_url=f"http://127.0.0.1:{silent.port}",
            read_timeout=0.4,
            endpoint_timeout=1.5,
            max_attempts=8,
        )
        with pytest.raises(EndpointDown, match=rf"http://127\.0\.0\.1:{silent.port} has not answered for \d+ s"):
            build_index(dead, synthetic_import.datastore_id, progress=False)
        assert len(silent.connections) <= 5, "botocore's retries end once the endpoint is known to be down"
        before = len(silent.connections)
        dataset = FrameDataset(index, FrameFetcher(dead, max_workers=1), error_policy="skip")
        with counting() as counted, pytest.raises(EndpointUnreachable, match=rf"127\.0\.0\.1:{silent.port}"):
            dataset[0]
        assert counted.replaced == 0 and counted.failed == 1, "no other sample was tried"
        assert len(silent.connections) - before <= RetryPolicy().max_attempts
    finally:
        silent.close()


def test_missing_credentials_are_one_error_never_retried(
    ahi: LocalAHI, synthetic_import: ImportedData, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 22.12: on the frame path they were EndpointUnreachable, retried 4 times as transfer errors."""
    from ahi_torch.client import ClientConfig
    from ahi_torch.errors import NoCredentials

    index = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    anonymous = AHIClient(ClientConfig(endpoint_url=ahi.endpoint_url, region="us-east-1"))
    with pytest.raises(NoCredentials, match="no AWS credentials found"):
        anonymous.list_datastores()
    before = sum(ahi.frame_request_counts().values())
    dataset = FrameDataset(index, FrameFetcher(anonymous, max_workers=1), error_policy="skip")
    with counting() as counted, pytest.raises(NoCredentials):
        dataset[0]
    assert counted.frame_retries == counted.transfer_errors == counted.replaced == 0
    assert sum(ahi.frame_request_counts().values()) == before, "nothing was sent"


def test_a_refused_connection_is_never_a_reason_to_replace_samples(
    ahi: LocalAHI, synthetic_import: ImportedData
) -> None:
    """A hung endpoint's neighbour: nothing listens on the port. Fails after the frame's attempts, no replacement."""
    import socket

    index = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = AHIClient(ahi.client().config, endpoint_url=f"http://127.0.0.1:{port}")
    dataset = FrameDataset(index, FrameFetcher(closed, max_workers=1), error_policy="skip")
    with counting() as counted, pytest.raises(EndpointUnreachable, match=rf"127\.0\.0\.1:{port}"):
        dataset[0]
    assert counted.replaced == 0 and counted.requests == RetryPolicy().max_attempts
    assert counted.transfer_errors == RetryPolicy().max_attempts and counted.frame_retries == counted.requests - 1
