"""Pure functions that produce one epoch's global order of sample indices.

Every function takes a numpy ``Generator`` seeded from (seed, epoch), so an order depends only
on the seed, the epoch and the data, never on rank, worker count or wall clock.
"""

from __future__ import annotations

import numpy as np


def sequential(size: int) -> np.ndarray:
    return np.arange(size, dtype=np.int64)


def shuffled(size: int, rng: np.random.Generator) -> np.ndarray:
    return rng.permutation(size).astype(np.int64)


def group_codes(groups: np.ndarray) -> np.ndarray:
    """Each sample's group as the rank of its key among the distinct keys (int32).

    Samplers keep these instead of the keys: 4 bytes per sample where image set IDs take 32, in
    every rank. Ranks keep the keys' sorted order, so every order and node assignment made from
    them is the one the keys themselves give.
    """
    keys = np.asarray(groups)
    inverse = np.unique(keys, return_inverse=True)[1].reshape(-1)
    return inverse.astype(np.int32 if len(keys) < 2**31 else np.int64)


def grouped(groups: np.ndarray, rng: np.random.Generator | None, shuffle_within: bool = True) -> np.ndarray:
    """Samples of one group (an image set, a series) kept together, groups in random order.

    Locality: consecutive samples then come from the same image set, so a batch reuses one
    metadata document and one set of connections. ``rng=None`` keeps index order.
    """
    codes = np.asarray(groups)
    if rng is None:
        return sequential(len(codes))
    unique, inverse = np.unique(codes, return_inverse=True)
    group_order = rng.permutation(len(unique))
    rank_of_group = np.empty_like(group_order)
    rank_of_group[group_order] = np.arange(len(unique))
    tiebreak = rng.random(len(codes)) if shuffle_within else np.arange(len(codes), dtype=np.float64)
    return np.lexsort((tiebreak, rank_of_group[inverse])).astype(np.int64)


def weighted(weights: np.ndarray, count: int, rng: np.random.Generator, replacement: bool = True) -> np.ndarray:
    """``count`` indices drawn with probability proportional to ``weights``."""
    p = np.asarray(weights, dtype=np.float64)
    if (p < 0).any() or not np.isfinite(p).all() or p.sum() <= 0:
        raise ValueError("weights must be finite, non-negative and not all zero")
    return rng.choice(len(p), size=count, replace=replacement, p=p / p.sum()).astype(np.int64)


def shard(order: np.ndarray, rank: int, world: int, drop_last: bool = False) -> np.ndarray:
    """This rank's share: every ``world``-th index from ``rank``, all ranks the same length.

    Without ``drop_last`` the order is padded by wrapping around so every rank gets
    ``ceil(n / world)`` samples (a few samples are seen twice per epoch); with it the tail that
    does not divide evenly is dropped.
    """
    size = len(order)
    if drop_last:
        usable = (size // world) * world
        padded = order[:usable]
    else:
        total = -(-size // world) * world
        padded = np.resize(order, total) if total != size else order
    return padded[rank::world]
