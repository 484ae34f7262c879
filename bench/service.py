"""The local AHI in a process of its own, so the benchmark's client processes do not carry it.

Its CPU is then not counted against ahi_torch, and DataLoader workers forked from the benchmark
do not inherit (and report in their RSS) the service and its in-memory S3. Network latency is a
start option (``--faults GetImageFrame:latency=...``), so LAN and WAN runs restart the service on
the same data directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from ahi_torch.client import AHIClient, ClientConfig
from ahi_torch.local.imports.uploads import ImportResult, run_import, upload, upload_plan


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and every live descendant (Linux ``/proc``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # the process ended meanwhile
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier += children
    return sum(cpu.get(pid, 0.0) for pid in tree)


class ServiceProcess:
    """``ahi-torch local serve`` in a child process; :meth:`restart` changes its fault options."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[str] | None = None
        self.endpoints: dict[str, str] = {}

    def start(self, faults: str | None = None) -> ServiceProcess:
        command = [sys.executable, "-m", "ahi_torch", "local", "serve", "--data-dir", str(self.data_dir), "--port", "0"]
        command += ["--faults", faults] if faults else []
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("AHI endpoint"):
            raise RuntimeError(f"local serve did not start: {line}{self.process.stdout.read()}")
        self.endpoints = json.loads((self.data_dir / "endpoints.json").read_text())
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
            self.process = None

    def restart(self, faults: str | None = None) -> None:
        self.stop()
        self.start(faults)

    def __enter__(self) -> ServiceProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return self.endpoints["endpoint_url"]

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, **options: Any) -> AHIClient:
        return AHIClient(
            ClientConfig(
                endpoint_url=self.endpoint_url,
                region=self.endpoints.get("region", "us-east-1"),
                access_key_id="local",
                secret_access_key="local",
                **options,
            )
        )

    def boto3(self, service: str, **config: Any) -> Any:
        session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name="us-east-1"
        )
        if service == "s3":
            return session.client("s3", endpoint_url=self.endpoints["s3_endpoint_url"])
        return session.client(
            service, endpoint_url=self.endpoint_url, config=Config(inject_host_prefix=False, **config)
        )

    def import_dicom(self, root: Path, beside_job: Callable[[], float] | None = None) -> ImportResult:
        """Upload a folder to the service's S3 and run StartDICOMImportJob on it, in a new data store.

        The seconds of each step land in :attr:`import_seconds`: ``upload``, ``job`` from the
        job's submittedAt to its endedAt as the service reports them (the client's polling, which
        backs off to 2 s between calls, is not the job's time), and ``total`` (upload and job as
        the user waits for them). ``beside_job`` runs right before the job and right after it,
        its results in :attr:`measured_beside_job`: a rate compared with the job's, measured on
        both sides of it.
        """
        mi = self.boto3("medical-imaging")
        datastore_id = self.client().create_datastore(datastoreName="bench")["datastoreId"]
        self.client().wait_for_datastore(datastore_id)
        s3 = self.boto3("s3")
        prefix = f"bench/{uuid.uuid4().hex[:12]}/"
        started = time.perf_counter()
        upload(s3, upload_plan([root]), "ahi-torch-bench", prefix)
        uploaded = time.perf_counter()
        self.measured_beside_job = [beside_job()] if beside_job is not None else []
        job_started = time.perf_counter()
        cpu_before = tree_cpu_seconds(self.pid)
        result = run_import(mi, s3, datastore_id, f"s3://ahi-torch-bench/{prefix}", "s3://ahi-torch-bench/output/")
        self.import_seconds = {
            "upload": uploaded - started,
            "job": result.job_seconds,
            "job_cpu": tree_cpu_seconds(self.pid) - cpu_before,  # the service, its fork server and its pool
            "total": uploaded - started + time.perf_counter() - job_started,
        }
        self.measured_beside_job += [beside_job()] if beside_job is not None else []
        return result
