"""Shuffled (optionally locality-aware) and distributed samplers."""

from __future__ import annotations

from collections.abc import Sized

import numpy as np

from .base import EpochSampler
from .orders import group_codes, grouped, sequential, shuffled


class ShuffleSampler(EpochSampler):
    """Every sample once per epoch, in an epoch-seeded order; sharded across ranks if asked.

    >>> sampler = ShuffleSampler(dataset, seed=7)
    >>> local = ShuffleSampler(dataset, groups=dataset.group_keys("image_set_id"))   # locality-aware

    Args:
        data: a dataset (or anything with a length) or a length.
        shuffle: False keeps index order (still sharded).
        groups: one group key per sample (image set IDs); samples of a group stay together,
            groups in random order, so batches reuse metadata and connections.
        seed, num_replicas, rank, drop_last: see :class:`EpochSampler`.
    """

    def __init__(
        self,
        data: Sized | int,
        *,
        shuffle: bool = True,
        groups: np.ndarray | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        self.size = data if isinstance(data, int) else len(data)
        self.shuffle = shuffle
        self.groups = group_codes(groups) if groups is not None else None
        if self.groups is not None and len(self.groups) != self.size:
            raise ValueError(f"groups has {len(self.groups)} entries for {self.size} samples")

    def order_size(self) -> int:
        return self.size

    def global_order(self, epoch: int) -> np.ndarray:
        rng = self.rng(epoch) if self.shuffle else None
        if self.groups is not None:
            return grouped(self.groups, rng)
        return shuffled(self.size, rng) if rng is not None else sequential(self.size)


class DistributedSampler(ShuffleSampler):
    """:class:`ShuffleSampler` that takes rank and world size from ``torch.distributed``.

    Every rank gets the same number of samples (the order is padded by wrapping unless
    ``drop_last``); together the ranks cover the epoch exactly once (plus the padding).
    """
