"""Lightning: a ``LightningDataModule`` over ahi_torch datasets that never double-shards.

Under DDP, Lightning wraps every sampler that is not a ``torch.utils.data.DistributedSampler``
in its own distributed wrapper. A sampler that already shards by rank is then sharded twice,
and each rank trains on a fraction of its share without a word. ahi_torch samplers are
``DistributedSampler`` subclasses that read rank and world size from ``torch.distributed`` when
iterated, so Lightning leaves them alone whatever ``use_distributed_sampler`` says, and every
sample is seen once per epoch across ranks.

>>> import lightning as L
>>> from ahi_torch.integrations.lightning import AHIDataModule
>>> data = AHIDataModule.from_config("configs/frames-classification.yaml")
>>> L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=3).fit(model, datamodule=data)

The loaders are ``torchdata``'s ``StatefulDataLoader`` (as :class:`ResumableDataLoader`): Lightning
saves their state in every checkpoint, and a run resumed from a mid-epoch checkpoint continues the
epoch exactly where it stopped (the samplers' ``state_dict`` records the position and the world
size). What survives a change: a resume on more or fewer GPUs deals the samples the epoch has not
yet seen to the new ranks, each once; a resume with another ``num_workers`` continues from the
sampler's position; a ``node_pinned`` sampler refuses a resume at another world size, since its
groups are pinned by node count. A config builds exactly the loaders ``build_dataloader`` builds
(same sampler: ``weighted``, ``class_balanced``, ``locality``, ``node_pinned``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import Dataset
from torchdata.stateful_dataloader import StatefulDataLoader

from ..client import AHIClient
from ..config import (
    Config,
    build_client,
    build_dataloader,
    build_dataset,
    build_index_from_config,
    load,
    make_loader,
)
from ..datasets import AHIDataset, FrameDataset, VolumeDataset
from ..errors import ConfigError
from ..fetch import FrameFetcher
from ..index import FrameIndex
from ..samplers import ShuffleSampler, patient_splits
from .stateful_loader import ResumableDataLoader, saved_sampler_state


class AHIDataModule(pl.LightningDataModule):
    """Train, validation and test loaders over ahi_torch datasets, with distributed samplers.

    Args:
        train, val, test: datasets (any map-style dataset; ahi_torch's ``FrameDataset`` or
            ``VolumeDataset`` in practice), or None. :meth:`from_config` builds them lazily.
        batch_size, num_workers, persistent_workers, multiprocessing_context, collate_fn: as
            for ``DataLoader``.
        seed: the shuffle seed; each epoch's order depends only on (seed, epoch).
        shuffle: shuffle the training set (validation and test keep index order).
        drop_last: drop the tail that does not divide evenly among ranks and batches;
            otherwise the sampler pads each rank's share by wrapping around.

    >>> data = AHIDataModule(train=FrameDataset(train_index, client), val=FrameDataset(val_index, client))
    """

    def __init__(
        self,
        train: Dataset[Any] | None = None,
        val: Dataset[Any] | None = None,
        test: Dataset[Any] | None = None,
        *,
        batch_size: int = 16,
        num_workers: int = 2,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        persistent_workers: bool = True,
        multiprocessing_context: str | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or num_workers < 0:
            raise ConfigError("batch_size must be >= 1 and num_workers >= 0")
        self.datasets: dict[str, Dataset[Any] | None] = {"train": train, "val": val, "test": test}
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.persistent_workers = persistent_workers
        self.multiprocessing_context = multiprocessing_context
        self.collate_fn = collate_fn
        self.config: Config | None = None
        self.splits: dict[str, str] = {}
        self._train_loader: StatefulDataLoader | None = None
        self._resume_train: dict[str, Any] | None = None

    @classmethod
    def from_config(
        cls, config: Config | str | Path, *, train: str | None = None, val: str | None = "val", test: str | None = None
    ) -> AHIDataModule:
        """A data module for a config: one dataset per named split of ``split.fractions``.

        ``train`` defaults to ``split.use`` (or the whole index without a split). The index is
        built or refreshed once in ``prepare_data`` (local rank 0 of each node) and only loaded
        by every rank in ``setup``. Loader settings come from the config's ``loader`` section.
        """
        cfg = config if isinstance(config, Config) else load(config)
        fractions = cfg.split.fractions if cfg.split is not None else {}
        default_train = cfg.split.use if cfg.split is not None and cfg.split.use else None
        if default_train is None and "train" in fractions:
            default_train = "train"  # fractions without split.use: the split named train trains
        if fractions and default_train is None and train is None:
            raise ConfigError(
                f"split.fractions has no split named train ({', '.join(fractions)}): "
                "set split.use or pass train= to name the one that trains"
            )
        names = {"train": train or default_train, "val": val, "test": test}
        if names["val"] == "val" and "val" not in fractions:
            names["val"] = None  # the default validation split is optional
        for stage, name in names.items():
            if name is not None and name not in fractions:
                raise ConfigError(f"split {name!r} for {stage} is not in split.fractions ({', '.join(fractions)})")
        loader = cfg.loader
        module = cls(
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            seed=loader.seed,
            shuffle=loader.sampler != "sequential",
            drop_last=loader.drop_last,
            persistent_workers=loader.persistent_workers,
            multiprocessing_context=loader.multiprocessing_context,
        )
        module.config = cfg
        module.splits = {stage: name for stage, name in names.items() if name is not None}
        if not module.splits:
            module.splits = {"train": ""}  # no split: the whole index trains
        return module

    @classmethod
    def from_index(
        cls,
        index: FrameIndex,
        source: AHIClient | FrameFetcher,
        *,
        fractions: dict[str, float] | None = None,
        split_seed: int = 0,
        volumes: bool = False,
        dataset_options: dict[str, Any] | None = None,
        **loader_options: Any,
    ) -> AHIDataModule:
        """Train and validation datasets from an index, split by patient (``{"train": 0.8, "val": 0.2}``).

        ``source`` (a :class:`~ahi_torch.fetch.FrameFetcher`, or a client) and ``dataset_options``
        go to every :class:`FrameDataset` (or :class:`VolumeDataset` with ``volumes=True``);
        ``loader_options`` to this class (batch size, workers, seed...).

        >>> frames = FrameFetcher(client, cache=FrameCache())
        >>> data = AHIDataModule.from_index(index, frames, dataset_options={"window": (40, 400)}, batch_size=32)
        """
        splits = patient_splits(index, fractions or {"train": 0.8, "val": 0.2}, seed=split_seed)
        kind = VolumeDataset if volumes else FrameDataset

        def made(role: str) -> FrameDataset | VolumeDataset | None:
            rows = splits.get(role)
            return kind(index.take(rows), source, **(dataset_options or {})) if rows is not None and len(rows) else None

        return cls(made("train"), made("val"), made("test"), **loader_options)

    def prepare_data(self) -> None:
        if self.config is not None:
            build_index_from_config(self.config, progress=False)

    def setup(self, stage: str | None = None) -> None:
        cfg = self.config
        if cfg is None:
            return
        loaded = dataclasses.replace(cfg, index=dataclasses.replace(cfg.index, refresh=False))
        client = build_client(cfg)
        for role, name in self.splits.items():
            if self.datasets.get(role) is not None:
                continue
            split = dataclasses.replace(loaded.split, use=name) if loaded.split is not None and name else None
            self.datasets[role] = build_dataset(dataclasses.replace(loaded, split=split), client, progress=False)

    def _loader(self, role: str, shuffle: bool) -> StatefulDataLoader | list[Any]:
        dataset = self.datasets.get(role)
        if dataset is None:
            return []  # Lightning runs no loop for a stage without loaders
        if self.config is not None and isinstance(dataset, AHIDataset):  # what build_dataloader builds
            built = build_dataloader(
                self.config, dataset, stage=role, loader_class=ResumableDataLoader, collate_fn=self.collate_fn
            )
        else:
            built = make_loader(
                dataset,
                ShuffleSampler(dataset, shuffle=shuffle, seed=self.seed, drop_last=self.drop_last),  # type: ignore[arg-type]
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                drop_last=self.drop_last,
                persistent_workers=self.persistent_workers,
                multiprocessing_context=self.multiprocessing_context,
                collate_fn=self.collate_fn,
                loader_class=ResumableDataLoader,
            )
        assert isinstance(built, StatefulDataLoader)
        return built

    def train_dataloader(self) -> StatefulDataLoader:
        loader = self._loader("train", self.shuffle)
        if not isinstance(loader, StatefulDataLoader):
            raise ConfigError("this data module has no train dataset")
        if self._resume_train is not None and hasattr(loader.sampler, "load_state_dict"):
            # Before Lightning measures the loader: it sizes the epoch from len() before it loads
            # the loader's own state, and a resume on another number of ranks changes that size.
            loader.sampler.load_state_dict(self._resume_train)
            self._resume_train = None
        self._train_loader = loader
        return loader

    def state_dict(self) -> dict[str, Any]:
        """The train sampler's position, as the train loader's own checkpoint state has it."""
        if self._train_loader is None:
            return {}
        sampler_state = saved_sampler_state(self._train_loader.state_dict())
        return {"train_sampler": sampler_state} if sampler_state is not None else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume_train = state_dict.get("train_sampler")

    def val_dataloader(self) -> StatefulDataLoader | list[Any]:
        return self._loader("val", False)

    def test_dataloader(self) -> StatefulDataLoader | list[Any]:
        return self._loader("test", False)
