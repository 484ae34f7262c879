"""Samplers: determinism, locality, weights, distributed coverage, exact resumption, splits."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ahi_torch.errors import ConfigError
from ahi_torch.index import FrameIndex
from ahi_torch.local import LocalAHI
from ahi_torch.samplers import (
    DistributedSampler,
    NodePinnedSampler,
    ShuffleSampler,
    WeightedSampler,
    assign_splits,
    class_balanced_weights,
    patient_splits,
)
from ahi_torch.samplers.orders import grouped
from ahi_torch.samplers.pinned import assign_to_nodes
from ahi_torch.samplers.splits import group_counts

from ..conftest import ImportedData


class Numbers(Dataset):
    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


def test_shuffle_is_epoch_seeded_and_deterministic() -> None:
    a, b = ShuffleSampler(100, seed=3), ShuffleSampler(100, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(100))
    assert list(ShuffleSampler(100, seed=4)) != first
    assert list(ShuffleSampler(10, shuffle=False)) == list(range(10))


def test_locality_keeps_image_sets_together() -> None:
    groups = np.repeat(np.array([b"a", b"b", b"c", b"d"]), 5)
    order = list(ShuffleSampler(len(groups), groups=groups, seed=1))
    sequence = [groups[i] for i in order]
    runs = [g for k, g in enumerate(sequence) if k == 0 or g != sequence[k - 1]]
    assert len(runs) == 4 and sorted(order) == list(range(20))


def test_samplers_keep_group_ranks_not_keys_and_order_as_the_keys_do() -> None:
    """Image set IDs are 32 bytes a sample in every rank; ranks of the sorted keys are 4 and order the same."""
    rng = np.random.default_rng(0)
    ids = np.array([f"{rng.integers(2**62):032x}".encode() for _ in range(40)])
    keys = ids[rng.integers(0, 40, 2000)]
    sampler = ShuffleSampler(len(keys), groups=keys, seed=9)
    assert sampler.groups is not None and sampler.groups.dtype == np.int32
    for epoch in range(3):
        expected = grouped(keys, np.random.default_rng([9, epoch]))
        np.testing.assert_array_equal(sampler.indices(epoch), expected)
    pinned = NodePinnedSampler(len(keys), groups=keys, seed=4, num_replicas=3, rank=0, ranks_per_node=1)
    assert pinned.groups.dtype == np.int32
    np.testing.assert_array_equal(pinned.owners(3), assign_to_nodes(keys, 3, 4), "the nodes cache warm --shard fills")


@pytest.mark.parametrize(
    ("size", "world", "drop_last"), [(103, 2, False), (103, 4, False), (103, 4, True), (8, 3, False)]
)
def test_ranks_cover_the_epoch_exactly_once(size: int, world: int, drop_last: bool) -> None:
    shards = [
        list(DistributedSampler(size, seed=5, num_replicas=world, rank=r, drop_last=drop_last)) for r in range(world)
    ]
    assert len({len(s) for s in shards}) == 1, "every rank gets the same number of samples"
    seen = Counter(i for shard in shards for i in shard)
    if drop_last:
        assert len(seen) == (size // world) * world and set(seen.values()) == {1}
    else:
        assert set(seen) == set(range(size))
        assert sum(seen.values()) - size == -(-size // world) * world - size, "only the padding repeats"
        if size % world == 0:
            assert not set(shards[0]) & set(shards[1]), "ranks are disjoint when the size divides"


def test_weighted_and_class_balanced() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    weights = class_balanced_weights(labels)
    assert weights.sum() == pytest.approx(1.0)
    draws = list(WeightedSampler(weights, num_samples=4000, seed=2))
    share = np.mean(labels[draws])
    assert 0.45 < share < 0.55, "both classes come out about equally often"
    assert list(WeightedSampler(weights, num_samples=50, seed=2)) == list(
        WeightedSampler(weights, num_samples=50, seed=2)
    )
    with pytest.raises(ConfigError):
        WeightedSampler([0.0, 0.0])


def test_resume_with_stateful_dataloader() -> None:
    dataset = Numbers(57)
    full_sampler = ShuffleSampler(dataset, seed=11)
    full_sampler.set_epoch(2)
    reference = [batch.tolist() for batch in DataLoader(dataset, batch_size=5, sampler=full_sampler)]

    sampler = ShuffleSampler(dataset, seed=11)
    sampler.set_epoch(2)
    loader = StatefulDataLoader(dataset, batch_size=5, sampler=sampler, num_workers=2)
    consumed = []
    iterator = iter(loader)
    for _ in range(4):
        consumed.append(next(iterator).tolist())
    state = loader.state_dict()
    del iterator, loader

    resumed_sampler = ShuffleSampler(dataset, seed=11)
    resumed = StatefulDataLoader(dataset, batch_size=5, sampler=resumed_sampler, num_workers=2)
    resumed.load_state_dict(state)
    rest = [batch.tolist() for batch in resumed]
    assert consumed == reference[:4]
    assert rest == reference[4:], "the resumed run yields exactly the batches the uninterrupted one would"
    # The next epoch after a resumed one is whole again, in the order a fresh sampler gives.
    resumed_sampler.set_epoch(3)
    full_sampler.set_epoch(3)
    next_epoch = [i for batch in resumed for i in batch.tolist()]
    assert len(next_epoch) == 57 and next_epoch == list(full_sampler)


def test_resume_without_torchdata() -> None:
    sampler = DistributedSampler(40, seed=1, num_replicas=2, rank=1)
    sampler.set_epoch(3)
    expected = list(sampler)
    sampler.load_state_dict({"epoch": 3, "yielded": 7, "seed": 1})
    assert list(sampler) == expected[7:]
    assert list(sampler) == expected, "only the resumed iteration is short"
    sampler.set_epoch(4)
    assert len(list(sampler)) == 20 == len(sampler)
    with pytest.raises(ConfigError, match="seed"):
        sampler.load_state_dict({"epoch": 0, "yielded": 0, "seed": 99})


def _consume(make, world: int, taken: int, epoch: int = 2) -> tuple[list[int], dict]:
    """Each of ``world`` ranks yields ``taken`` samples; rank 0's state is what a checkpoint keeps."""
    seen: list[int] = []
    state: dict = {}
    for rank in range(world):
        sampler = make(world, rank)
        sampler.set_epoch(epoch)
        iterator = iter(sampler)
        seen += [next(iterator) for _ in range(taken)]
        if rank == 0:
            state = sampler.state_dict()
    return seen, state


def _resume(make, world: int, state: dict, epoch: int = 2) -> list[list[int]]:
    shares = []
    for rank in range(world):
        sampler = make(world, rank)
        sampler.load_state_dict(state)
        sampler.set_epoch(epoch)
        shares.append(list(sampler))
    return shares


def test_a_resume_at_another_world_size_sees_each_remaining_sample_once() -> None:
    """Issue 22.5: saved at 2 ranks (3 of 16 each), loaded at 3 missed 3 samples and repeated 2; at 1 repeated 3."""

    def make(world: int, rank: int) -> ShuffleSampler:
        return ShuffleSampler(16, seed=5, num_replicas=world, rank=rank)

    seen, state = _consume(make, 2, 3)
    assert state["world_size"] == 2 and state["yielded"] == 3 and state["size"] == 16
    for world in (1, 3, 4):
        shares = _resume(make, world, state)
        assert len({len(share) for share in shares}) == 1, "every rank yields as many (DDP waits otherwise)"
        rest = [i for share in shares for i in share]
        assert set(rest) == set(range(16)) - set(seen), f"world {world}: every remaining sample"
        assert len(rest) - len(set(rest)) < world, f"world {world}: only the padding of the last round repeats"
    # The next epoch is whole again at the new world size.
    sampler = make(3, 0)
    sampler.load_state_dict(state)
    sampler.set_epoch(3)
    assert list(sampler) == list(make(3, 0).indices(3))


@settings(max_examples=150, deadline=None)
@given(
    size=st.integers(min_value=1, max_value=80),
    worlds=st.lists(st.integers(min_value=1, max_value=6), min_size=2, max_size=4),
    fractions=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=3, max_size=3),
    drop_last=st.booleans(),
)
def test_resumes_across_world_sizes_yield_each_remaining_sample_once(size, worlds, fractions, drop_last) -> None:  # type: ignore[no-untyped-def]
    """Any chain of world sizes and resume points: no sample is skipped, none repeats beyond padding."""
    state = None
    seen: list[int] = []
    for world, fraction in zip(worlds, fractions, strict=False):
        samplers = [ShuffleSampler(size, seed=1, num_replicas=world, rank=r, drop_last=drop_last) for r in range(world)]
        for sampler in samplers:
            if state is not None:
                sampler.load_state_dict(state)
            sampler.set_epoch(0)
        length = len(samplers[0])
        taken = int(fraction * length)
        iterators = [iter(sampler) for sampler in samplers]
        for iterator in iterators:
            seen += list(itertools.islice(iterator, taken))
        state = samplers[0].state_dict()
    world = worlds[-1]

    def make(w: int, r: int) -> ShuffleSampler:
        return ShuffleSampler(size, seed=1, num_replicas=w, rank=r, drop_last=drop_last)

    rest = [i for share in _resume(make, world, state, 0) for i in share]
    everything = seen + rest
    padding = sum(w - 1 for w in worlds)  # each world pads (or drops) at most one uneven round
    if drop_last:
        assert len(everything) == len(set(everything)), "without padding nothing repeats"
        assert size - len(set(everything)) <= padding, "only each world's uneven tail is dropped"
    else:
        assert set(everything) == set(range(size)), "nothing skipped"
        assert len(everything) - size <= padding, "nothing repeats beyond the padding"


def test_a_resume_with_another_dataset_size_or_pinned_world_is_refused() -> None:
    sampler = ShuffleSampler(16, seed=5, num_replicas=2, rank=0)
    state = sampler.state_dict()
    with pytest.raises(ConfigError, match="saved over 16 samples per epoch, this sampler has 17"):
        ShuffleSampler(17, seed=5).load_state_dict(state)
    groups = np.repeat(np.arange(8), 2)
    pinned = NodePinnedSampler(16, groups=groups, ranks_per_node=1, num_replicas=2, rank=0)
    iterator = iter(pinned)
    next(iterator)
    moved = NodePinnedSampler(16, groups=groups, ranks_per_node=1, num_replicas=4, rank=0)
    moved.load_state_dict(pinned.state_dict())
    with pytest.raises(ConfigError, match="node-pinned sampler state saved at 2 ranks cannot resume at 4"):
        list(moved)


@pytest.mark.parametrize(("before", "after"), [(2, 0), (0, 2), (2, 1)])
def test_a_resume_with_another_number_of_workers(before: int, after: int) -> None:
    """StatefulDataLoader asserts on a changed num_workers; ResumableDataLoader resumes from the sampler."""
    from ahi_torch.integrations.stateful_loader import ResumableDataLoader

    dataset = Numbers(41)
    reference = ShuffleSampler(dataset, seed=2)
    reference.set_epoch(1)
    expected = list(reference)
    sampler = ShuffleSampler(dataset, seed=2)
    sampler.set_epoch(1)
    loader = ResumableDataLoader(dataset, batch_size=4, sampler=sampler, num_workers=before)
    iterator = iter(loader)
    head = [i for _ in range(3) for i in next(iterator).tolist()]
    state = loader.state_dict()
    del iterator, loader
    resumed = ResumableDataLoader(dataset, batch_size=4, sampler=ShuffleSampler(dataset, seed=2), num_workers=after)
    resumed.load_state_dict(state)
    rest = [i for batch in resumed for i in batch.tolist()]
    assert head + rest == expected


def test_patient_splits_share_no_patient_and_are_as_close_as_groups_allow() -> None:
    patients = [f"P{i:03d}" for i in range(200)]
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    assigned = dict(zip(patients, assign_splits(patients, fractions, seed=3), strict=True))
    assert Counter(assigned.values()) == {"train": 140, "val": 30, "test": 30}
    grown = patients + [f"NEW{i}" for i in range(50)]
    again = dict(zip(grown, assign_splits(grown, fractions, seed=3), strict=True))
    moved = sum(again[p] != assigned[p] for p in patients)
    assert moved < 20, "a grown index moves only groups near a boundary of the hash order"
    with pytest.raises(ConfigError, match="add up to 1"):
        assign_splits(patients, {"train": 0.7, "val": 0.7})


def test_split_fractions_in_another_order_give_the_same_split() -> None:
    """Issue 22.2: {train, val} and {val, train} split differently and leaked every val patient."""
    patients = [f"P{i:04d}" for i in range(1010)]
    first = assign_splits(patients, {"train": 0.8, "val": 0.2}, seed=0)
    second = assign_splits(patients, {"val": 0.2, "train": 0.8}, seed=0)
    assert first == second
    assert Counter(first) == {"train": 808, "val": 202}


def test_small_splits_hit_the_fractions_whatever_the_seed() -> None:
    """16 patients at 75/25 gave 38 % to 94 % train across seeds; now exactly 12 and 4."""
    patients = [f"P{i}" for i in range(16)]
    for seed in range(50):
        assert Counter(assign_splits(patients, {"train": 0.75, "val": 0.25}, seed=seed)) == {"train": 12, "val": 4}
    assert group_counts(10, {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == {"a": 4, "b": 3, "c": 3}
    assert group_counts(3, {"train": 0.9995, "val": 0.0005}) == {"train": 3, "val": 0}


@settings(max_examples=200, deadline=None)
@given(
    groups=st.lists(st.text(min_size=0, max_size=6), min_size=1, max_size=60),
    weights=st.lists(st.integers(min_value=0, max_value=10), min_size=1, max_size=4).filter(lambda w: sum(w) > 0),
    seed=st.integers(min_value=0, max_value=2**31),
    data=st.data(),
)
def test_splits_are_disjoint_complete_and_independent_of_key_order(groups, weights, seed, data) -> None:  # type: ignore[no-untyped-def]
    names = [f"s{i}" for i in range(len(weights))]
    fractions = {name: w / sum(weights) for name, w in zip(names, weights, strict=True)}
    shuffled_names = data.draw(st.permutations(names))
    reordered = {name: fractions[name] for name in shuffled_names}
    first = assign_splits(groups, fractions, seed)
    assert first == assign_splits(groups, reordered, seed), "key order never matters"
    assert first == assign_splits(groups, fractions, seed), "deterministic"
    by_group: dict[str, set[str]] = {}
    for group, split in zip(groups, first, strict=True):
        by_group.setdefault(group or "", set()).add(split)
    assert all(len(splits) == 1 for splits in by_group.values()), "a group lies in one split"
    distinct = len(by_group)
    counts = Counter(next(iter(s)) for s in by_group.values())
    for name in names:
        assert abs(counts.get(name, 0) - fractions[name] * distinct) < 1, "as close as whole groups allow"


def test_index_splits(ahi: LocalAHI, synthetic_import: ImportedData) -> None:
    from ahi_torch.index import build_index

    index: FrameIndex = build_index(ahi.client(), synthetic_import.datastore_id, progress=False)
    splits = patient_splits(index, {"train": 0.5, "val": 0.25, "test": 0.25}, seed=0)
    assert sum(len(rows) for rows in splits.values()) == len(index)
    patients = {name: set(index.take(rows).texts("patient_id")) for name, rows in splits.items() if len(rows)}
    names = list(patients)
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            assert not patients[first] & patients[second]


def test_sampling_without_replacement_never_repeats() -> None:
    weights = np.array([1000.0] + [1.0] * 49)
    without = WeightedSampler(weights, num_samples=50, replacement=False, seed=4)
    for epoch in range(3):
        without.set_epoch(epoch)
        drawn = list(without)
        assert sorted(drawn) == list(range(50)), "every index exactly once"
    with_replacement = WeightedSampler(weights, num_samples=50, replacement=True, seed=4)
    assert Counter(with_replacement)[0] > 40, "the heavy index dominates when drawn with replacement"
    partial = WeightedSampler(weights, num_samples=10, replacement=False, seed=4)
    assert len(set(partial)) == 10 and 0 in set(partial)


def test_lightning_and_torch_see_distributed_samplers() -> None:
    """Lightning wraps any sampler that is not a torch DistributedSampler (double sharding)."""
    from torch.utils.data import DistributedSampler as TorchDistributedSampler

    for sampler in (ShuffleSampler(8), WeightedSampler([1.0] * 8), DistributedSampler(8, num_replicas=2, rank=1)):
        assert isinstance(sampler, TorchDistributedSampler)
    late = ShuffleSampler(8, seed=0)  # made before any process group: rank and world are read when iterated
    assert (late.num_replicas, late.rank) == (1, 0) and len(late) == 8


def test_resume_state_and_split_fractions_are_checked() -> None:
    """Two mutants cosmic-ray found surviving (docs/testing.md)."""
    sampler = ShuffleSampler(10, seed=1)
    sampler.load_state_dict({"epoch": 0, "yielded": 0, "seed": 1})
    assert len(list(sampler)) == 10, "resuming at 0 is the whole epoch"
    with pytest.raises(ConfigError, match="negative"):
        sampler.load_state_dict({"epoch": 0, "yielded": -1, "seed": 1})
    with pytest.raises(ConfigError, match=r"add up to 1, not 0\.5"):
        assign_splits(["P1"], {"train": 0.25, "val": 0.25})
    assert assign_splits(["P1"], {"train": 0.9995, "val": 0.0}) == ["train"]


def test_length_counts_what_a_rank_yielded_before_each_resume() -> None:
    """Lightning ends an epoch at len(loader) counting restored batches: the length must include them."""

    def make(world: int, rank: int) -> ShuffleSampler:
        return ShuffleSampler(20, seed=2, num_replicas=world, rank=rank)

    seen, state = _consume(make, 2, 3)  # 3 each at 2 ranks: 6 of 20 consumed
    samplers = [make(3, r) for r in range(3)]
    for sampler in samplers:
        sampler.load_state_dict(state)
        sampler.set_epoch(2)
    assert {len(s) for s in samplers} == {3 + 5}, "3 yielded before, and 14 left over 3 ranks: 5 each"
    iterators = [iter(s) for s in samplers]
    seen += [next(it) for it in iterators]  # one more each at 3 ranks
    again = samplers[0].state_dict()
    assert again["before"] == 3 and again["world_size"] == 3 and again["yielded"] == 1
    rest = []
    for rank in range(3):
        sampler = make(3, rank)
        sampler.load_state_dict(again)
        sampler.set_epoch(2)
        assert len(sampler) == 8, "the same world again: the length is unchanged"
        rest += list(sampler)
    assert set(seen) | set(rest) == set(range(20)), "nothing skipped"
    assert len(seen) + len(rest) - 20 <= 2, "nothing repeats but the last round's padding at 3 ranks"


@pytest.mark.parametrize(
    "make",
    [
        lambda w, r: ShuffleSampler(30, seed=4, num_replicas=w, rank=r, groups=np.repeat(np.arange(6), 5)),
        lambda w, r: WeightedSampler(np.linspace(1, 2, 30), replacement=False, seed=4, num_replicas=w, rank=r),
        lambda w, r: DistributedSampler(30, seed=4, num_replicas=w, rank=r),
    ],
    ids=["locality", "weighted", "distributed"],
)
def test_every_sampler_kind_resumes_at_another_world_size(make) -> None:  # type: ignore[no-untyped-def]
    """The neighbours of ShuffleSampler: grouped, weighted without replacement and DistributedSampler resume alike."""
    seen, state = _consume(make, 2, 4)
    for world in (1, 3):
        rest = [i for share in _resume(make, world, state) for i in share]
        assert set(seen) | set(rest) == set(range(30)) and not set(seen) & set(rest[: 30 - len(seen)])
        assert len(rest) - len(set(rest)) < world
