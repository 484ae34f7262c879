"""EpochSampler: deterministic, epoch-seeded, rank-sharded and resumable mid-epoch."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class ResumePoint:
    """Where a saved iteration stood: the epoch, the world it ran in, and what it had consumed.

    ``consumed`` counts positions of the epoch's global order taken by all ranks together. Ranks
    step in lockstep (DDP), so after each rank has yielded ``k`` samples the first ``k * world``
    positions are consumed, whichever rank saved the state; MosaicML Streaming records its
    ``sample_in_epoch`` the same way. ``start`` is where the saved iteration itself began
    (non-zero after a resume at another world size).
    """

    epoch: int
    yielded: int
    world_size: int
    start: int
    size: int
    #: what this rank had yielded in the epoch before the saved iteration began (another world's
    #: share); trainers count it in the epoch's batches, so the length keeps it
    before: int = 0

    @property
    def consumed(self) -> int:
        return min(self.size, self.start + self.yielded * self.world_size)


class EpochSampler(DistributedSampler[int]):
    """Base class: subclasses give the epoch's global order; this class shards and resumes.

    The global order comes from ``numpy.random.default_rng([seed, epoch])``; each rank takes its
    shard; ``state_dict()`` records the epoch, the world size and how many indices this rank has
    yielded, and ``load_state_dict()`` makes the next iteration continue exactly there. This is
    the protocol ``torchdata.stateful_dataloader.StatefulDataLoader`` uses to checkpoint loaders.

    A state saved at one world size resumes at another: the positions of the epoch's order that
    all ranks had consumed are skipped, and the rest is dealt to the new ranks, each sample once
    (plus the usual padding so every rank yields as many). A state whose dataset size differs
    from this sampler's is refused.

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
        self._start = 0  # positions of the global order consumed before this iteration began
        self._before = 0  # what this rank counted as yielded before this iteration began
        self._world_at_start = 1
        self._resume: ResumePoint | None = None

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

    def order_size(self) -> int:
        """Length of every epoch's global order (what a saved state is checked against)."""
        return len(self.global_order(self.epoch))

    def rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])

    def indices(self, epoch: int | None = None, start: int = 0) -> np.ndarray:
        """This rank's indices for an epoch (default: the current one), from position ``start`` of its order."""
        order = self.global_order(self.epoch if epoch is None else epoch)
        world, rank = world_info(self._num_replicas, self._rank)
        return shard(order[start:], rank, world, self.drop_last)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (and so the order); call it before each epoch, as with DistributedSampler.

        A resume loaded for another epoch is dropped: that epoch is over.
        """
        self.epoch = int(epoch)
        if self._resume is not None and self._resume.epoch != self.epoch:
            self._resume = None

    def __len__(self) -> int:
        """This rank's samples in the epoch, those yielded before a resume at another world size included.

        Trainers count the batches already done from their checkpoint (Lightning restores the
        batch index), so after a resume on more or fewer ranks the length is what this rank had
        yielded by then plus its share of the rest: the epoch ends when the rest is served.
        """
        start, _, before = self._planned()
        return before + len(self.indices(start=start))

    def _planned(self) -> tuple[int, int, int]:
        """(start in the global order, indices of this rank's shard to skip, yielded before) for the next iteration."""
        point = self._resume
        if point is None:
            return 0, 0, 0
        if point.world_size == self.num_replicas:
            return point.start, point.yielded, point.before  # the same shards: continue each where it stopped
        return point.consumed, 0, point.before + point.yielded  # another world: deal the rest to the new ranks

    def __iter__(self) -> Iterator[int]:
        start, skip, before = self._planned()
        self._resume = None
        self._start, self._before, self._world_at_start = start, before, self.num_replicas
        self.yielded = skip
        for index in itertools.islice(self.indices(start=start).tolist(), skip, None):
            self.yielded += 1
            yield index

    def state_dict(self) -> dict[str, Any]:
        point = self._resume
        if point is not None:  # loaded but not iterated yet: the position is still the loaded one
            return {
                "epoch": point.epoch,
                "yielded": point.yielded,
                "seed": self.seed,
                "world_size": point.world_size,
                "start": point.start,
                "before": point.before,
                "size": point.size,
            }
        return {
            "epoch": self.epoch,
            "yielded": self.yielded,
            "seed": self.seed,
            "world_size": self._world_at_start,
            "start": self._start,
            "before": self._before,
            "size": self.order_size(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state.get("seed", self.seed)) != self.seed:
            raise ConfigError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        yielded = int(state["yielded"])
        if yielded < 0:
            raise ConfigError("cannot resume a sampler from a negative position")
        size = self.order_size()
        saved_size = int(state.get("size", size))
        if saved_size != size:
            raise ConfigError(
                f"sampler state was saved over {saved_size} samples per epoch, this sampler has {size}: "
                "the dataset changed, so the samples already seen cannot be told apart; start the epoch over"
            )
        self.epoch = int(state["epoch"])
        self._resume = ResumePoint(
            epoch=self.epoch,
            yielded=yielded,
            world_size=int(state.get("world_size", self.num_replicas)),
            start=int(state.get("start", 0)),
            size=size,
            before=int(state.get("before", 0)),
        )
