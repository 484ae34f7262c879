"""Samplers: epoch-seeded shuffles, locality, weights, distributed shards, exact resumption.

>>> sampler = ShuffleSampler(dataset, seed=0, num_replicas=world_size, rank=rank)
>>> for epoch in range(epochs):
...     sampler.set_epoch(epoch)
...     for batch in DataLoader(dataset, sampler=sampler, batch_size=32, num_workers=4): ...
"""

from .base import EpochSampler, world_info
from .pinned import NodePinnedSampler, assign_to_nodes
from .shuffle import DistributedSampler, ShuffleSampler
from .splits import assign_splits, patient_splits
from .weighted import WeightedSampler, class_balanced_weights

__all__ = [
    "DistributedSampler",
    "EpochSampler",
    "NodePinnedSampler",
    "ShuffleSampler",
    "WeightedSampler",
    "assign_splits",
    "assign_to_nodes",
    "class_balanced_weights",
    "patient_splits",
    "world_info",
]
