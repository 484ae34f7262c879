"""Patient-grouped train/validation/test splits, stable when the index grows.

Each patient's split is decided by a hash of (seed, patient ID) alone, so adding or removing
other patients never moves a patient to another split, and no patient is ever in two splits.

>>> splits = patient_splits(index, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
>>> train = index.take(splits["train"])
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import ConfigError
from ..index import FrameIndex

GROUP_KEYS = ("patient_id", "study_instance_uid", "series_instance_uid")


def _unit_interval(seed: int, key: str) -> float:
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(keys: list[str | None], fractions: dict[str, float], seed: int = 0) -> list[str]:
    """The split of each key (one per row); rows without a key go with the key ``""``."""
    if not fractions or any(f < 0 for f in fractions.values()):
        raise ConfigError("split fractions must be non-negative")
    total = sum(fractions.values())
    if not 0.999 <= total <= 1.001:
        raise ConfigError(f"split fractions must add up to 1, not {total:g}")
    names = list(fractions)
    edges = np.cumsum([fractions[n] for n in names])
    cache: dict[str, str] = {}
    result = []
    for key in keys:
        text = key or ""
        if text not in cache:
            position = _unit_interval(seed, text)
            cache[text] = names[min(int(np.searchsorted(edges, position, side="right")), len(names) - 1)]
        result.append(cache[text])
    return result


def patient_splits(
    index: FrameIndex, fractions: dict[str, float], *, seed: int = 0, key: str = "patient_id"
) -> dict[str, np.ndarray]:
    """Row numbers of each split, grouped by ``key`` (patient by default)."""
    if key not in GROUP_KEYS:
        raise ConfigError(f"splits group by {', '.join(GROUP_KEYS)}, not {key!r}")
    assigned = np.asarray(assign_splits(index.texts(key), fractions, seed))
    return {name: np.flatnonzero(assigned == name) for name in fractions}
