"""EpochSampler: deterministic, epoch-seeded, rank-sharded and resumable mid-epoch."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import DistributedSampler

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


class EpochSampler(DistributedSampler[int]):
    """Base class: subclasses give the epoch's global order; this class shards and resumes.

    The global order comes from ``numpy.random.default_rng([seed, epoch])``; each rank takes its
    shard; ``state_dict()`` records the epoch and how many indices this iteration has yielded,
    and ``load_state_dict()`` makes the next iteration continue exactly there. This is the
    protocol ``torchdata.stateful_dataloader.StatefulDataLoader`` uses to checkpoint loaders.

    Every ahi_torch sampler is a ``torch.utils.data.DistributedSampler``, so Lightning and other
    trainers recognise it as already sharded and never wrap it in a second distributed sampler
    (which would silently train each rank on a fraction of its shard). World size and rank not
    given here are read from ``torch.distributed`` each time they are needed, so a sampler made
    before the process group starts (in a Lightning ``DataModule``) still shards correctly.
    """

    def __init__(
        self, *, seed: int = 0, num_replicas: int | None = None, rank: int | None = None, drop_last: bool = False
    ) -> None:
        # DistributedSampler.__init__ is not called: it wants a dataset and a started process group.
        if num_replicas is not None or rank is not None:
            world_info(num_replicas, rank if rank is not None else 0)  # reject a bad rank now
        self._num_replicas = num_replicas
        self._rank = rank
        self.seed = int(seed)
        self.drop_last = drop_last
        self.shuffle = True
        self.epoch = 0
        self.yielded = 0
        self._resume_at: int | None = None

    @property
    def num_replicas(self) -> int:
        return world_info(self._num_replicas, self._rank)[0]

    @num_replicas.setter
    def num_replicas(self, value: int) -> None:
        self._num_replicas = value

    @property
    def rank(self) -> int:
        return world_info(self._num_replicas, self._rank)[1]

    @rank.setter
    def rank(self, value: int) -> None:
        self._rank = value

    def global_order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def indices(self, epoch: int | None = None) -> np.ndarray:
        """This rank's indices for an epoch (default: the current one)."""
        order = self.global_order(self.epoch if epoch is None else epoch)
        world, rank = world_info(self._num_replicas, self._rank)
        return shard(order, rank, world, self.drop_last)

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
