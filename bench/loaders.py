"""The datasets compared in one run: ahi_torch, a naive boto3 + pylibjpeg dataset, and the bounds."""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import torch
from botocore.config import Config
from torch.utils.data import Dataset

from ahi_torch.codecs import decode_frame


class NaiveDataset(Dataset[torch.Tensor]):
    """What a user writes without ahi_torch: one GetImageFrame and one pylibjpeg decode per item."""

    def __init__(self, endpoint_url: str, datastore_id: str, frames: list[tuple[str, str]]) -> None:
        self.endpoint_url, self.datastore_id, self.frames = endpoint_url, datastore_id, frames
        self.client: Any = None

    def __len__(self) -> int:
        return len(self.frames)

    def _mi(self) -> Any:
        if self.client is None:
            self.client = boto3.session.Session().client(
                "medical-imaging",
                endpoint_url=self.endpoint_url,
                region_name="us-east-1",
                aws_access_key_id="local",
                aws_secret_access_key="local",
                config=Config(inject_host_prefix=False, max_pool_connections=16),
            )
        return self.client

    def __getitem__(self, index: int) -> torch.Tensor:
        import openjpeg

        image_set_id, frame_id = self.frames[index]
        response = self._mi().get_image_frame(
            datastoreId=self.datastore_id, imageSetId=image_set_id, imageFrameInformation={"imageFrameId": frame_id}
        )
        pixels = openjpeg.decode(response["imageFrameBlob"].read())
        return torch.from_numpy(pixels.astype(np.float32))[None]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "client": None}


class TunedNaiveDataset(NaiveDataset):
    """The naive dataset given a fair chance: a batch's frames fetched by a thread pool.

    It keeps as many requests in flight per worker as ahi_torch does (``threads``), so what
    remains between the two is ahi_torch's own work, not concurrency.
    """

    def __init__(self, endpoint_url: str, datastore_id: str, frames: list[tuple[str, str]], threads: int = 8) -> None:
        super().__init__(endpoint_url, datastore_id, frames)
        self.threads = threads
        self.pool: ThreadPoolExecutor | None = None

    def __getitems__(self, indices: list[int]) -> list[torch.Tensor]:
        if self.pool is None:
            self._mi()  # one client, made before the threads share it
            self.pool = ThreadPoolExecutor(self.threads)
        return list(self.pool.map(self.__getitem__, indices))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "client": None, "pool": None}


class DecodeOnlyDataset(Dataset[torch.Tensor]):
    """The decode-only bound: the same encoded frames, already in memory, decoded with the same code."""

    def __init__(self, encoded: list[bytes]) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.from_numpy(decode_frame(self.encoded[index]).astype(np.float32))[None]


class MemmapDataset(Dataset[torch.Tensor]):
    """The practical warm limit: decoded frames read from a numpy memmap (.npy), rescaled alike."""

    def __init__(self, path: Path, slope: float, intercept: float) -> None:
        self.path, self.slope, self.intercept = path, slope, intercept
        self.array: np.ndarray | None = None

    def __len__(self) -> int:
        return int(np.load(self.path, mmap_mode="r").shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.array is None:
            self.array = np.load(self.path, mmap_mode="r")
        frame = self.array[index].astype(np.float32) * self.slope + self.intercept
        return torch.from_numpy(frame)[None]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "array": None}


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def worker_pids(loader_iterator: Any) -> list[int]:
    """PIDs of a DataLoader iterator's worker processes."""
    return [worker.pid for worker in getattr(loader_iterator, "_workers", []) if worker.pid]


def cpu_description() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = 0
    with contextlib.suppress(OSError, IndexError, ValueError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return f"{model}, {os.cpu_count()} cores, {memory / 1024**3:.0f} GiB"
