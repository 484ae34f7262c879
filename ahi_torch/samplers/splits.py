"""Patient-grouped train/validation/test splits: disjoint, deterministic, as close to the fractions as groups allow.

Groups (patients by default) are put in an order drawn from a hash of (seed, group key), and
each split takes a run of that order whose length is its fraction of the groups, rounded so the
counts add up (largest remainder). Split names are laid out in sorted order, so
``{"train": .8, "val": .2}`` and ``{"val": .2, "train": .8}`` give the same split: two configs of
one experiment, one serving train and one val, never share a patient.

A group's split depends on the seed, the fractions and the set of groups: the same index always
splits the same way, in every process. An index that gained groups since moves a few groups that
sit at a boundary of the hash order, so compute every split of one experiment from one index
version (the manifest records it).

>>> splits = patient_splits(index, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
>>> train = index.take(splits["train"])
>>> split_shares(index, splits)["val"]
{'groups': 20, 'group_share': 0.1, 'rows': 2960, 'row_share': 0.098}
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import ConfigError
from ..index import FrameIndex

log = logging.getLogger(__name__)

GROUP_KEYS = ("patient_id", "study_instance_uid", "series_instance_uid")


def _hash_order(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()


def check_fractions(fractions: Mapping[str, float]) -> None:
    """Refuse fractions that are empty, negative or do not add up to 1."""
    if not fractions or any(not math.isfinite(f) or f < 0 for f in fractions.values()):
        raise ConfigError("split fractions must be non-negative")
    total = math.fsum(fractions.values())  # exact: the same whatever the order of the keys
    if not 0.999 <= total <= 1.001:
        raise ConfigError(f"split fractions must add up to 1, not {total:g}")


def group_counts(groups: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Whole groups per split, closest to the fractions and adding up to ``groups`` (largest remainder).

    >>> group_counts(16, {"train": 0.75, "val": 0.25})
    {'train': 12, 'val': 4}
    """
    check_fractions(fractions)
    names = sorted(fractions)
    total = math.fsum(fractions.values())
    quotas = {name: groups * fractions[name] / total for name in names}
    counts = {name: math.floor(quotas[name]) for name in names}
    left = groups - sum(counts.values())
    # The largest remainders get the groups left over; ties go to the name that sorts first.
    for name in sorted(names, key=lambda n: (-(quotas[n] - counts[n]), n))[:left]:
        counts[name] += 1
    return counts


def assign_splits(keys: Sequence[str | None], fractions: Mapping[str, float], seed: int = 0) -> list[str]:
    """The split of each key (one per row); rows without a key form one group, the key ``""``."""
    check_fractions(fractions)
    distinct = sorted({key or "" for key in keys}, key=lambda k: (_hash_order(seed, k), k))
    split_of: dict[str, str] = {}
    start = 0
    for name, count in group_counts(len(distinct), fractions).items():
        split_of.update(dict.fromkeys(distinct[start : start + count], name))
        start += count
    return [split_of[key or ""] for key in keys]


def patient_splits(
    index: FrameIndex, fractions: Mapping[str, float], *, seed: int = 0, key: str = "patient_id"
) -> dict[str, np.ndarray]:
    """Row numbers of each split, grouped by ``key`` (patient by default); logs the shares achieved."""
    if key not in GROUP_KEYS:
        raise ConfigError(f"splits group by {', '.join(GROUP_KEYS)}, not {key!r}")
    assigned = np.asarray(assign_splits(index.texts(key), fractions, seed))
    splits = {name: np.flatnonzero(assigned == name) for name in sorted(fractions)}
    shares = split_shares(index, splits, key)
    log.info(
        "split by %s: %s",
        key,
        ", ".join(
            f"{name} {s['groups']:g} groups ({s['group_share']:.1%}), {s['rows']:g} frames"
            for name, s in shares.items()
        ),
    )
    empty = [name for name, share in shares.items() if fractions[name] > 0 and share["groups"] == 0]
    if empty:
        log.warning("split %s got no %s: too few groups for its fraction", ", ".join(empty), key)
    return splits


def split_shares(
    index: FrameIndex, splits: Mapping[str, np.ndarray], key: str = "patient_id"
) -> dict[str, dict[str, float]]:
    """The groups and rows each split got, as counts and shares (what a manifest or log reports)."""
    texts = np.asarray(index.texts(key), dtype=object)
    groups_total = max(1, len({t or "" for t in texts}))
    rows_total = max(1, len(index))
    shares: dict[str, dict[str, float]] = {}
    for name, rows in splits.items():
        groups = len({t or "" for t in texts[rows]})
        shares[name] = {
            "groups": groups,
            "group_share": round(groups / groups_total, 4),
            "rows": len(rows),
            "row_share": round(len(rows) / rows_total, 4),
        }
    return shares
