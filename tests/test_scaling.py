"""Past one node: quota shares, a budget shared through a TCPStore, node-pinned samplers, sharded warming."""

from __future__ import annotations

import json
import multiprocessing as mp
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from torch.distributed import TCPStore

from ahi_torch.cache import FrameCache
from ahi_torch.cli.cache_cmd import parse_shard
from ahi_torch.cli.common import UsageError
from ahi_torch.client import AHIClient, ClientConfig
from ahi_torch.client.core import request_budget
from ahi_torch.client.quotas import AWS_QUOTAS, node_share
from ahi_torch.client.ratelimit import RateLimiter
from ahi_torch.client.store_budget import StoreBudget
from ahi_torch.counters import counting
from ahi_torch.datasets import FrameDataset
from ahi_torch.errors import ConfigError
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import build_index
from ahi_torch.index.build import within_quota
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import SeriesSpec, write_series
from ahi_torch.samplers import NodePinnedSampler, assign_to_nodes

from .conftest import ImportedData

pytestmark = pytest.mark.service  # runs a local AHI (or its processes) of its own


def test_each_node_takes_its_share_of_the_account_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    assert node_share({"WORLD_SIZE": "8", "LOCAL_WORLD_SIZE": "2"}) == 0.25
    assert node_share({}) == 1.0 and node_share({"WORLD_SIZE": "x"}) == 1.0
    monkeypatch.setenv("WORLD_SIZE", "8")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    budget = request_budget(ClientConfig(region="us-east-1", rate_limits="aws"))
    assert isinstance(budget, RateLimiter)
    assert budget.rates["GetImageFrame"] == 250.0 and budget.rates["GetImageSetMetadata"] == 12.5
    assert budget.burst_seconds == 2.0, "AHI's burst: twice the rate"
    explicit = request_budget(ClientConfig(region="us-east-1", rate_limits={"GetImageFrame": 100}, rate_limit_share=1))
    assert isinstance(explicit, RateLimiter) and explicit.rates == {"GetImageFrame": 100.0}
    assert request_budget(ClientConfig(region="us-east-1")) is None
    with pytest.raises(ConfigError, match="rate_limit_share"):
        ClientConfig(rate_limits="aws", rate_limit_share=1.5)
    with pytest.raises(ConfigError, match="one of aws"):
        ClientConfig(rate_limits="gcp")


def test_index_builds_against_aws_stay_within_the_metadata_quota() -> None:
    aws = AHIClient(ClientConfig(region="us-east-1", access_key_id="k", secret_access_key="s"))
    held = within_quota(aws)
    assert (
        held.config.quotas
        == {"SearchImageSets": 25.0, "GetImageSetMetadata": 50.0}
        == {k: AWS_QUOTAS[k] for k in ("SearchImageSets", "GetImageSetMetadata")}
    )
    local = AHIClient(ClientConfig(region="us-east-1", endpoint_url="http://127.0.0.1:1"))
    assert within_quota(local) is local
    limited = AHIClient(ClientConfig(region="us-east-1", rate_limits={"GetImageFrame": 10.0}))
    assert within_quota(limited) is limited, "a client's own limits are kept"


class _DecisionClock:
    """The clock StoreBudget reads, remembering its last reading: the moment a grant was decided.

    A time taken after ``acquire`` returns can fall in the next window when the store's reply
    crosses a second's boundary; the window a grant belongs to is the one its ``add`` counted in.
    """

    sleep = staticmethod(time.sleep)
    last = 0.0

    @classmethod
    def time(cls) -> float:
        cls.last = time.time()
        return cls.last


def _take_from_store(port: int, count: int, out: str) -> None:
    import ahi_torch.client.store_budget as store_budget

    store_budget.time = _DecisionClock  # type: ignore[assignment]
    budget = StoreBudget({"GetImageFrame": 20.0}, f"127.0.0.1:{port}")
    granted = []
    for _ in range(count):
        budget.acquire("GetImageFrame")
        granted.append(_DecisionClock.last)
    Path(out).write_text("\n".join(map(str, granted)))


def test_store_budget_is_one_budget_for_every_process(tmp_path: Path) -> None:
    """Three processes (as on three nodes) share 20 requests/s through one TCPStore: <= 20 in every window."""
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    context = mp.get_context("spawn")
    outs = [tmp_path / f"grants{k}.txt" for k in range(3)]
    workers = [context.Process(target=_take_from_store, args=(store.port, 20, str(out))) for out in outs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    grants = [float(t) for out in outs for t in out.read_text().split()]
    per_window = Counter(int(t // 1.0) for t in grants)
    assert len(grants) == 60 and max(per_window.values()) <= 20, per_window
    assert len(per_window) >= 3, "60 requests at 20/s need three windows, whoever asks"


def test_store_budget_reads_torchrun_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        StoreBudget({"GetImageFrame": 1.0}, "env")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.7")
    monkeypatch.setenv("MASTER_PORT", "29500")
    budget = StoreBudget({"GetImageFrame": 1.0})
    assert (budget.host, budget.port) == ("10.0.0.7", 29500)
    with pytest.raises(ConfigError, match="host:port"):
        StoreBudget({"GetImageFrame": 1.0}, "nohost")


def test_groups_are_pinned_whole_and_balanced() -> None:
    groups = np.repeat([f"s{k}" for k in range(10)], [5, 9, 3, 7, 7, 2, 8, 4, 6, 1])
    owners = assign_to_nodes(groups, 3, seed=1)
    for group in np.unique(groups):
        assert len(set(owners[groups == group])) == 1, "a group never spans two nodes"
    loads = np.bincount(owners, minlength=3)
    assert loads.sum() == len(groups) and loads.max() - loads.min() <= 9
    assert (assign_to_nodes(groups, 3, seed=1) == owners).all(), "fixed by the seed alone"
    with pytest.raises(ConfigError, match="every node needs one"):
        assign_to_nodes(groups[:5], 2)


@pytest.mark.parametrize("drop_last", [False, True])
def test_node_pinned_ranks_stay_on_their_node_and_stay_even(drop_last: bool) -> None:
    groups = np.repeat([f"s{k}" for k in range(9)], [6, 3, 8, 5, 4, 7, 2, 9, 4])
    size, nodes, per_node = len(groups), 2, 2

    def sampler(rank: int) -> NodePinnedSampler:
        return NodePinnedSampler(
            size, groups=groups, ranks_per_node=per_node, num_replicas=nodes * per_node, rank=rank, drop_last=drop_last
        )

    owners = sampler(0).owners(nodes)
    seen_per_epoch = []
    for epoch in range(2):
        lengths, seen = set(), {}
        for rank in range(nodes * per_node):
            s = sampler(rank)
            s.set_epoch(epoch)
            order = list(s)
            lengths.add(len(order))
            seen[rank] = order
            assert set(owners[order]) == {rank // per_node}, "a rank only reads its node's samples"
        assert len(lengths) == 1, "every rank yields the same number of samples"
        node_sets = [set(seen[0]) | set(seen[1]), set(seen[2]) | set(seen[3])]
        assert not node_sets[0] & node_sets[1]
        if not drop_last:
            assert node_sets[0] | node_sets[1] == set(range(size)), "padding repeats, never leaves out"
        seen_per_epoch.append(seen)
    assert seen_per_epoch[0][0] != seen_per_epoch[1][0], "reshuffled within the node each epoch"
    if not drop_last:
        first, second = (set(epoch[0]) | set(epoch[1]) for epoch in seen_per_epoch)
        assert first == second, "the node keeps the same samples"
    resumed = sampler(1)
    resumed.set_epoch(1)
    iterator = iter(resumed)
    head = [next(iterator) for _ in range(3)]
    state = resumed.state_dict()
    fresh = sampler(1)
    fresh.load_state_dict(state)
    assert head + list(fresh) == seen_per_epoch[1][1], "resumes exactly"


def test_parse_shard_from_flag_and_torchrun() -> None:
    assert parse_shard("1/4", {}) == (1, 4, 0, 1)
    assert parse_shard(None, {}) is None
    env = {"GROUP_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}
    assert parse_shard(None, env) == (1, 2, 1, 2)
    for bad in ("4/4", "a/2", "1"):
        with pytest.raises(UsageError, match="I/N"):
            parse_shard(bad, {})


def test_sharded_warming_fills_each_node_with_what_it_trains_on(
    ahi: LocalAHI, synthetic_import: ImportedData, tmp_path: Path
) -> None:
    index_path = tmp_path / "index.parquet"
    build_index(ahi.client(), synthetic_import.datastore_id, progress=False).save(index_path)
    config = tmp_path / "pinned.yaml"
    config.write_text(
        f"connection: {{endpoint_url: '{ahi.endpoint_url}'}}\n"
        f"datastore: {{id: '{synthetic_import.datastore_id}'}}\n"
        f"index: {{path: '{index_path}', refresh: false}}\n"
        "loader: {sampler: node_pinned, seed: 5, num_workers: 0}\n"
    )
    warmed = []
    for node in range(2):
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "ahi_torch",
                "cache",
                "warm",
                str(config),
                "--shard",
                f"{node}/2",
                "--override",
                f"cache.dir={tmp_path / f'node{node}'}",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]
        assert f"(node {node} of 2)" in completed.stdout
        warmed.append(FrameCache(tmp_path / f"node{node}").keys())
    from ahi_torch.config import build_dataset, load

    dataset = build_dataset(load(config), progress=False)
    assert not set(warmed[0]) & set(warmed[1]) and len(warmed[0]) + len(warmed[1]) == len(dataset)
    for node in range(2):
        node_dataset = FrameDataset(
            dataset.frame_index, FrameFetcher(ahi.client(), cache=FrameCache(tmp_path / f"node{node}"))
        )
        sampler = NodePinnedSampler(
            node_dataset, groups=node_dataset.group_keys(), seed=5, num_replicas=2, rank=node, ranks_per_node=1
        )
        with counting() as counted:
            for index in sampler:
                node_dataset[index]
        assert counted.requests == 0 and counted.cache_hits == len(sampler), "the node's epoch is fully warm"


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_torchrun_two_nodes_divide_the_data_and_share_one_budget(tmp_path: Path) -> None:
    """torchrun --nnodes 2 --nproc-per-node 2 on this machine: pinned shares, one TCPStore budget, warm epoch 2."""
    for series in range(8):
        spec = SeriesSpec(
            patient_id=f"N{series}", study_key="n", series_key=f"n{series}", slices=12, rows=32, columns=32
        )
        write_series(tmp_path / "dicom" / spec.series_key, spec)
    rate = 40.0
    with LocalAHI() as ahi:
        result = ahi.import_dicom(tmp_path / "dicom")
        index = build_index(ahi.client(), result.datastore_id, progress=False)
        index.save(tmp_path / "index.parquet")
        frames = len(index)
        port = _free_port()
        jobs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "2",
                    "--node-rank",
                    str(node),
                    "--master-addr",
                    "127.0.0.1",
                    "--master-port",
                    str(port),
                    str(Path(__file__).with_name("scaling_job.py")),
                    ahi.endpoint_url,
                    str(tmp_path / "index.parquet"),
                    str(tmp_path),
                    str(rate),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for node in range(2)
        ]
        outputs = [job.communicate(timeout=400)[0] for job in jobs]
        assert all(job.returncode == 0 for job in jobs), "\n".join(out[-3000:] for out in outputs)
        timeline = ahi.request_timeline("GetImageFrame")
        total = sum(timeline.values())
    records = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(4)]
    by_node: dict[int, set[int]] = {0: set(), 1: set()}
    for record in records:
        assert record["node"] == record["rank"] // 2
        by_node[record["node"]] |= set(record["epochs"][0]["seen"])
    for record in records:
        assert set(record["epochs"][1]["seen"]) <= by_node[record["node"]], "a node keeps its share every epoch"
        assert record["epochs"][1]["stats"]["requests"] == 0, "the second epoch is served by the node's own cache"
    assert not by_node[0] & by_node[1] and by_node[0] | by_node[1] == set(range(frames))
    assert len({len(r["epochs"][0]["seen"]) for r in records}) == 1, "equal batch counts on every rank"
    for node in range(2):
        cached = FrameCache(tmp_path / f"node{node}" / "cache").keys()
        assert len(cached) == len(by_node[node]), "each node's cache holds its share, nothing more"
    # One budget for the job: no second over the rate plus AHI's burst, and the epoch is spread over
    # at least frames / rate seconds (unlimited, 96 small frames take well under one).
    assert frames <= total <= frames + 4, "each frame fetched once (padding repeats come from the cache)"
    assert max(timeline.values()) <= 2 * rate and len(timeline) >= -(-frames // int(rate)), timeline


class _FakeClock:
    """A clock whose sleeps advance it at once: budgets are checked without waiting."""

    def __init__(self, start: float) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_store_budget_counts_slow_quotas_in_windows_of_their_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """0.25 requests/s is one request per 4 s window (a mutant counted it in 1 s windows: 4x the quota)."""
    import ahi_torch.client.store_budget as store_budget

    clock = _FakeClock(start=4000.0)  # a multiple of 4: the first window starts now
    monkeypatch.setattr(store_budget, "time", clock)
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    budget = StoreBudget({"CopyImageSet": 0.25, "GetImageFrame": 3.0}, f"127.0.0.1:{store.port}")
    granted = []
    for _ in range(3):
        budget.acquire("CopyImageSet")
        granted.append(clock.now - 4000.0)
    assert granted == [0.0, 4.0, 8.0]
    frames = []
    for _ in range(7):
        budget.acquire("GetImageFrame")
        frames.append(int(clock.now))
    assert max(Counter(frames).values()) <= 3, "a 1 s window holds at most the quota"
