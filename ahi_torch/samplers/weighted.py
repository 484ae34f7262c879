"""Weighted and class-balanced sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from .base import EpochSampler
from .orders import weighted


def class_balanced_weights(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Weights that give every class the same total probability (1 / class count per sample).

    >>> class_balanced_weights([0, 0, 0, 1])
    array([0.16666667, 0.16666667, 0.16666667, 0.5       ])
    """
    values = np.asarray(labels)
    classes, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    per_sample = 1.0 / counts[inverse]
    return per_sample / len(classes)


class WeightedSampler(EpochSampler):
    """``num_samples`` draws per epoch with probability proportional to ``weights``.

    >>> sampler = WeightedSampler(class_balanced_weights(dataset.labels.values), seed=1)
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray,
        num_samples: int | None = None,
        *,
        replacement: bool = True,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__(seed=seed, num_replicas=num_replicas, rank=rank, drop_last=drop_last)
        self.weights = np.asarray(weights, dtype=np.float64)
        if self.weights.ndim != 1 or len(self.weights) == 0:
            raise ConfigError("weights must be a non-empty 1-D sequence")
        if (self.weights < 0).any() or not np.isfinite(self.weights).all() or self.weights.sum() <= 0:
            raise ConfigError("weights must be finite, non-negative and not all zero")
        self.num_samples = int(num_samples or len(self.weights))
        if not replacement and self.num_samples > int((self.weights > 0).sum()):
            raise ConfigError("without replacement, num_samples cannot exceed the samples with non-zero weight")
        self.replacement = replacement

    def order_size(self) -> int:
        return self.num_samples

    def global_order(self, epoch: int) -> np.ndarray:
        return weighted(self.weights, self.num_samples, self.rng(epoch), self.replacement)
