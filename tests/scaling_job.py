"""One rank of the two-node torchrun job in tests/test_scaling.py (the recipe in docs/scaling.md).

Run as ``torchrun --nnodes 2 --nproc-per-node 2 --node-rank K ... tests/scaling_job.py ENDPOINT
INDEX WORK RATE``. The two "nodes" share nothing but the index file: each keeps its own frame
cache under WORK/node<K>. Every rank trains two epochs on its node's pinned share, taking
GetImageFrame requests from one budget of RATE/s kept in torchrun's TCPStore, and writes the
samples it saw to WORK/rank<R>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader

from ahi_torch.cache import FrameCache
from ahi_torch.client import AHIClient, ClientConfig
from ahi_torch.datasets import FrameDataset
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex
from ahi_torch.samplers import NodePinnedSampler


def main() -> None:
    endpoint, index_path, work, rate = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4])
    dist.init_process_group("gloo")
    rank, node = dist.get_rank(), int(os.environ["GROUP_RANK"])
    client = AHIClient(
        ClientConfig(
            region="us-east-1",
            endpoint_url=endpoint,
            access_key_id="local",
            secret_access_key="local",
            rate_limits={"GetImageFrame": rate},
            rate_limit_store="env",  # MASTER_ADDR:MASTER_PORT, torchrun's own store
        )
    )
    cache = FrameCache(work / f"node{node}" / "cache")
    dataset = FrameDataset(FrameIndex.load(index_path), FrameFetcher(client, cache=cache), rescale=False, dtype=None)
    sampler = NodePinnedSampler(dataset, groups=dataset.group_keys("image_set_id"), seed=3)
    epochs = []
    for epoch in range(2):
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, sampler=sampler, batch_size=4, num_workers=1)
        seen = [int(i) for batch in loader for i in batch["meta"]["index"]]
        epochs.append({"seen": seen, "stats": dataset.stats.summary()})
        dataset.stats.reset()
        dist.barrier()  # the second epoch starts when every rank finished the first
    record = {"rank": rank, "node": node, "epochs": epochs}
    (work / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
