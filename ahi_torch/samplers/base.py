"""EpochSampler: deterministic, epoch-seeded, rank-sharded and resumable mid-epoch."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from ..errors import ConfigError
from .orders import shard


def world_info(num_replicas: int | None, rank: int | None) -> tuple[int, int]:
    """(world size, rank) from the arguments, else from torch.distributed when initialised, else (1, 0)."""
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if num_replicas < 1 or not 0 <= rank < num_replicas:
        raise ConfigError(f"rank must be in [0, {num_replicas}), not {rank}")
    return num_replicas, rank


class EpochSampler(Sampler[int]):
    """Base class: subclasses give the epoch's global order; this class shards and resumes.

    The global order comes from ``numpy.random.default_rng([seed, epoch])``; each rank takes its
    shard; ``state_dict()`` records the epoch and how many indices this iteration has yielded,
    and ``load_state_dict()`` makes the next iteration continue exactly there. This is the
    protocol ``torchdata.stateful_dataloader.StatefulDataLoader`` uses to checkpoint loaders.
    """

    def __init__(
        self, *, seed: int = 0, num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False
    ) -> None:
        self.seed = int(seed)
        self.num_replicas, self.rank = world_info(num_replicas, rank)
        self.drop_last = drop_last
        self.epoch = 0
        self.yielded = 0
        self._resume_at: int | None = None

    def global_order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's indices for an epoch (default: the current one)."""
        order = self.global_order(self.epoch if epoch is None else epoch)
        return shard(order, self.rank, self.num_replicas, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (and so the order); call it before each epoch, as with DistributedSampler."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.indices())

    def __iter__(self) -> Iterator[int]:
        start = self._resume_at or 0
        self._resume_at = None
        self.yielded = start
        for index in itertools.islice(self.indices().tolist(), start, None):
            self.yielded += 1
            yield index

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "yielded": self.yielded, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ConfigError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        yielded = int(state["yielded"])
        if yielded < 0:
            raise ConfigError("cannot resume a sampler from a negative position")
        self.epoch = int(state["epoch"])
        self._resume_at = yielded
