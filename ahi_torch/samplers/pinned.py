"""NodePinnedSampler: each node trains on its own share of image sets (or patients), every epoch.

A global shuffle sends every sample to every node sooner or later, so each node's cache ends up
holding the whole dataset and fetching it from AHI: N nodes, N times the requests and the disk.
Pinning assigns each group (image set, patient) to one node once, from the seed alone; each
epoch then shuffles the node's samples and deals them to the node's ranks. A node's cache holds
only its share, and its second epoch is fully warm.

>>> sampler = NodePinnedSampler(dataset, groups=dataset.group_keys("image_set_id"), seed=0)
>>> sampler.set_epoch(epoch)                       # ranks and nodes read from torch.distributed

Prefer it when the dataset does not fit one node's cache, or when AHI's request quota is what
bounds the epoch. Prefer the global shuffle (:class:`ShuffleSampler`) for small datasets, or when
every rank must see samples from the whole distribution in every epoch: with pinning, a node's
batches come from its own share only (shuffled within it), which is the usual trade made by
sharded loaders (MosaicML Streaming, WebDataset) for the same reason.

Every rank yields the same number of samples, so DDP never waits on a rank that ran out: nodes
whose share is smaller repeat some of their samples (``drop_last=False``, the default) or the
larger shares drop their extra samples (``drop_last=True``). The sampler is resumable like every
:class:`EpochSampler`.
"""

from __future__ import annotations

import os
from collections.abc import Sized

import numpy as np

from ..errors import ConfigError
from .base import EpochSampler, world_info
from .orders import group_codes


def ranks_per_node(default: int) -> int:
    """Processes per node: ``LOCAL_WORLD_SIZE`` as torchrun sets it, else ``default``."""
    value = os.environ.get("LOCAL_WORLD_SIZE")
    return int(value) if value and value.isdigit() and int(value) > 0 else default


def assign_to_nodes(groups: np.ndarray, nodes: int, seed: int = 0) -> np.ndarray:
    """The node (0..nodes-1) of every sample: whole groups to one node, balanced by sample count.

    Groups are taken largest first (ties in a seeded random order) and each goes to the node
    with the fewest samples so far, so shares differ by at most one group's size. The result
    depends only on the groups, the node count and the seed.
    """
    if nodes < 1:
        raise ConfigError(f"nodes must be at least 1, not {nodes}")
    keys = np.asarray(groups)
    unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
    if len(unique) < nodes:
        raise ConfigError(f"{len(unique)} groups cannot be pinned to {nodes} nodes: every node needs one")
    tiebreak = np.random.default_rng([seed, nodes]).permutation(len(unique))
    load = np.zeros(nodes, dtype=np.int64)
    node_of_group = np.empty(len(unique), dtype=np.int64)
    for group in np.lexsort((tiebreak, -counts)):
        node = int(np.argmin(load))
        node_of_group[group] = node
        load[node] += counts[group]
    return node_of_group[inverse.reshape(-1)]


class NodePinnedSampler(EpochSampler):
    """Samples pinned to nodes by group, shuffled within the node each epoch; see the module docstring.

    Args:
        data: a dataset (or anything with a length) or a length.
        groups: one key per sample (image set or patient IDs); a group never spans two nodes.
        ranks_per_node: processes per node; default ``LOCAL_WORLD_SIZE`` (torchrun), else all
            ranks on one node. Ranks ``k * ranks_per_node ...`` form node ``k``, as torchrun
            numbers them.
        seed, num_replicas, rank, drop_last: see :class:`EpochSampler`; ``drop_last`` evens the
            ranks by dropping rather than repeating samples.
    """

    def __init__(
        self,
        data: Sized | int,
        *,
        groups: np.ndarray,
        ranks_per_node: int | None = None,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        self.size = data if isinstance(data, int) else len(data)
        self.groups = group_codes(groups)
        if len(self.groups) != self.size:
            raise ConfigError(f"groups has {len(self.groups)} entries for {self.size} samples")
        self._ranks_per_node = ranks_per_node
        self._owners: dict[int, np.ndarray] = {}

    def layout(self) -> tuple[int, int, int, int]:
        """(nodes, this node, ranks per node, this rank within the node)."""
        world, rank = world_info(self._num_replicas, self._rank)
        per_node = self._ranks_per_node or ranks_per_node(world)
        if world % per_node:
            raise ConfigError(f"{world} ranks do not divide into nodes of {per_node}")
        return world // per_node, rank // per_node, per_node, rank % per_node

    def owners(self, nodes: int) -> np.ndarray:
        """The node of every sample (computed once per node count)."""
        if nodes not in self._owners:
            self._owners[nodes] = assign_to_nodes(self.groups, nodes, self.seed)
        return self._owners[nodes]

    def node_samples(self, node: int, nodes: int) -> np.ndarray:
        """The samples pinned to ``node`` of ``nodes``, in index order."""
        return np.flatnonzero(self.owners(nodes) == node)

    def global_order(self, epoch: int) -> np.ndarray:
        """This node's samples in the epoch's order (the node's "global" order)."""
        nodes, node, _, _ = self.layout()
        mine = self.node_samples(node, nodes)
        return mine[np.random.default_rng([self.seed, epoch, node]).permutation(len(mine))]

    def order_size(self) -> int:
        return self.size

    def _planned(self) -> tuple[int, int, int]:
        point = self._resume
        if point is not None and point.world_size != self.num_replicas:
            raise ConfigError(
                f"a node-pinned sampler state saved at {point.world_size} ranks cannot resume at {self.num_replicas}: "
                "groups are pinned to nodes by the node count, so the samples each node already saw do not carry "
                "over; resume at the same world size, or start the epoch over (set_epoch to the next epoch)"
            )
        return super()._planned()

    def indices(self, epoch: int | None = None, start: int = 0) -> np.ndarray:
        """This rank's indices; ``start`` is always 0 here (a pinned epoch never moves between worlds)."""
        nodes, _, per_node, local = self.layout()
        order = self.global_order(self.epoch if epoch is None else epoch)
        shares = np.bincount(self.owners(nodes), minlength=nodes)
        if self.drop_last:
            total = int(shares.min()) // per_node * per_node
            order = order[:total]
        else:
            total = -(-int(shares.max()) // per_node) * per_node
            order = np.resize(order, total)
        return order[local::per_node]
