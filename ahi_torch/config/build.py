"""From a validated :class:`Config` to a client, an index, a dataset, a DataLoader and a manifest.

>>> cfg = load("configs/frames-classification.yaml")
>>> dataset = build_dataset(cfg)
>>> loader = build_dataloader(cfg, dataset)
>>> write_manifest(cfg, dataset, "runs/exp1")      # config hash + index version, for reproducibility
"""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from torch.utils.data import DataLoader, Sampler

from .. import __version__
from ..cache import FrameCache
from ..client import AHIClient
from ..datasets import AHIDataset, ColumnLabels, ErrorPolicy, FrameDataset, PatchDataset, TableLabels, VolumeDataset
from ..datasets.labels import LabelSpec
from ..errors import ConfigError, IndexFormatError, ResourceNotFound
from ..fetch import FrameFetcher
from ..index import FrameIndex, Search, build_index, refresh_index, search
from ..samplers import NodePinnedSampler, ShuffleSampler, WeightedSampler, class_balanced_weights, patient_splits
from ..transforms import Compose, create
from .loading import config_hash, to_dict
from .schema import Config, LabelsConfig

log = logging.getLogger(__name__)


def build_client(cfg: Config) -> AHIClient:
    """The client the ``connection`` section describes (it is a :class:`ClientConfig` already)."""
    return AHIClient(cfg.connection)


def resolve_datastore(cfg: Config, client: AHIClient) -> str:
    """The data store ID: ``datastore.id``, or the ACTIVE data store named ``datastore.name``."""
    if cfg.datastore.id:
        client.get_datastore(datastoreId=cfg.datastore.id)
        return cfg.datastore.id
    if not cfg.datastore.name:
        raise ConfigError("datastore: give an id or a name")
    matches = [
        d["datastoreId"]
        for d in client.iter_datastores(datastoreStatus="ACTIVE")
        if d.get("datastoreName") == cfg.datastore.name
    ]
    if not matches:
        raise ResourceNotFound("ResourceNotFoundException", f"no ACTIVE data store named {cfg.datastore.name!r}")
    if len(matches) > 1:
        raise ConfigError(
            f"datastore.name {cfg.datastore.name!r} matches {len(matches)} data stores; give datastore.id"
        )
    return matches[0]


def searches_of(cfg: Config) -> list[Search]:
    """The config's searches; SearchConfig checked each filter (one key, a known name, a fitting value) at load."""
    groups = cfg.search.searches or [cfg.search.filters]
    return [
        Search(*[search.named_filter(*next(iter(f.items())), f"search.filters[{i}]") for i, f in enumerate(group)])
        for group in groups
    ]


def build_index_from_config(
    cfg: Config, client: AHIClient | None = None, *, progress: bool = True, rebuild: bool = False
) -> FrameIndex:
    """Load the index at ``index.path`` (refreshed if asked) or build and save it.

    A saved index is reused only when it was built from what the config asks for (data store,
    searches, extra tags, non-primary image sets); otherwise it is built again, with a warning
    saying what changed. ``rebuild=True`` always builds it again.
    """
    client = client or build_client(cfg)
    path = Path(cfg.index.path)
    datastore_id = resolve_datastore(cfg, client)
    saved = _saved_index(path)
    changes = selection_changes(saved, cfg, datastore_id) if saved is not None else []
    if changes:
        log.warning("the index at %s was built from %s; building it again", path, "; ".join(changes))
    if saved is None or changes or rebuild:
        index = _fresh_index(cfg, client, datastore_id, progress)
    elif cfg.index.refresh:
        index, _ = refresh_index(client, saved, max_workers=cfg.index.max_workers, progress=progress)
    else:
        index = saved
    if len(index) == 0:
        kept = f"; the index at {path} was left as it was" if path.exists() else ""
        raise ConfigError(f"the search matched no frames in data store {datastore_id} (check search.filters){kept}")
    if index is not saved:  # a loaded, unrefreshed index is not rewritten (ranks may load it at once)
        index.save(path)
    if cfg.search.modalities:
        index = index.filter(pc.is_in(index.table.column("modality"), value_set=pa.array(cfg.search.modalities)))
    return index


def selection_changes(index: FrameIndex, cfg: Config, datastore_id: str) -> list[str]:
    """What differs between the selection ``index`` was built from and the one ``cfg`` asks for."""
    info = index.info

    def canonical(value: Any) -> str:
        return json.dumps(value, sort_keys=True, default=str)

    wanted = {
        "datastore_id": datastore_id,
        "searches": [s.describe() for s in searches_of(cfg)],
        "extra_tags": list(cfg.search.extra_tags),
        "include_non_primary": cfg.search.include_non_primary,
    }
    return [
        f"another {name} ({canonical(info.get(name))} instead of {canonical(value)})"
        for name, value in wanted.items()
        if canonical(info.get(name)) != canonical(value)
    ]


def _saved_index(path: Path) -> FrameIndex | None:
    """The index saved at ``path``; None when there is none or it has an older format (it is rebuilt)."""
    if not path.exists():
        return None
    try:
        return FrameIndex.load(path)
    except IndexFormatError as error:
        log.warning("%s; building it again", error)
        return None


def _fresh_index(cfg: Config, client: AHIClient, datastore_id: str, progress: bool) -> FrameIndex:
    return build_index(
        client,
        datastore_id,
        searches=searches_of(cfg),
        partitions=cfg.search.partitions,
        partition_field=cfg.search.partition_field,
        include_non_primary=cfg.search.include_non_primary,
        extra_tags=cfg.search.extra_tags,
        max_workers=cfg.index.max_workers,
        progress=progress,
    )


def _labels(spec: LabelsConfig | None) -> LabelSpec:
    if spec is None:
        return None
    classes = tuple(spec.classes) if spec.classes is not None else None
    if spec.column:
        return ColumnLabels(spec.column, value_type=spec.value_type, classes=classes)
    assert spec.table is not None  # LabelsConfig checked that one of the two is given
    return TableLabels(
        spec.table, on=spec.join_on, column=spec.value, key=spec.key, value_type=spec.value_type, classes=classes
    )


def build_cache(cfg: Config) -> FrameCache | None:
    if not cfg.cache.enabled:
        return None
    return FrameCache(cfg.cache.dir, size_limit_gb=cfg.cache.size_gb, mode=cfg.cache.mode)


def build_fetcher(cfg: Config, client: AHIClient | None = None) -> FrameFetcher:
    """The frame source a config describes: ``fetch:`` field for field, the ``cache:`` section, the client.

    Datasets, the CLI, Lightning and MONAI (``LoadAHId(source=build_fetcher(cfg))``) all take it.
    """
    settings = {field.name: getattr(cfg.fetch, field.name) for field in dataclasses.fields(cfg.fetch)}
    return FrameFetcher(client or build_client(cfg), cache=build_cache(cfg), **settings)


def build_dataset(cfg: Config, client: AHIClient | None = None, *, progress: bool = True) -> AHIDataset:
    """The dataset a config describes (index built or refreshed as needed)."""
    client = client or build_client(cfg)
    index = build_index_from_config(cfg, client, progress=progress)
    if cfg.split is not None and cfg.split.use is not None:  # SplitConfig checked use and fractions
        rows = patient_splits(index, cfg.split.fractions, seed=cfg.split.seed, key=cfg.split.by)[cfg.split.use]
        index = index.take(rows)
    window: tuple[float, float] | str | None = None
    if cfg.intensity.window is not None:  # IntensityConfig checked [center, width]
        window = (float(cfg.intensity.window[0]), float(cfg.intensity.window[1]))
    elif cfg.intensity.dicom_window:
        window = "dicom"
    transforms = [create(t.name, t.args) for t in cfg.transforms]
    shared: dict[str, Any] = {
        "labels": _labels(cfg.labels),
        "unlabeled": cfg.labels.unlabeled if cfg.labels else "error",
        "transform": Compose(transforms) if transforms else None,
        "error_policy": ErrorPolicy(cfg.loader.error_policy, failure_log=cfg.loader.failure_log),
    }
    if cfg.view == "patches":
        patches = cfg.patches
        return PatchDataset(
            index,
            build_fetcher(cfg, client),
            size=patches.size,
            level=patches.chosen_level,
            mpp=patches.mpp,
            stride=patches.stride,
            tissue=patches.tissue,
            **shared,
        )
    kind = VolumeDataset if cfg.view == "volumes" else FrameDataset
    return kind(index, build_fetcher(cfg, client), rescale=cfg.intensity.rescale, window=window, **shared)


def build_sampler(cfg: Config, dataset: AHIDataset) -> Sampler[int]:
    loader = cfg.loader
    if loader.sampler == "sequential":
        return ShuffleSampler(dataset, shuffle=False, seed=loader.seed)
    if loader.sampler == "shuffle":
        return ShuffleSampler(dataset, seed=loader.seed, drop_last=loader.drop_last)
    if loader.sampler == "node_pinned":
        return NodePinnedSampler(
            dataset, groups=dataset.group_keys(loader.pin_by), seed=loader.seed, drop_last=loader.drop_last
        )
    if loader.sampler == "locality":
        # Frames or patches of one image set read in a row: its tiles and series stay warm in the cache.
        groups = dataset.group_keys("image_set_id") if not isinstance(dataset, VolumeDataset) else None
        return ShuffleSampler(dataset, groups=groups, seed=loader.seed)
    if dataset.labels is None:
        raise ConfigError(f"loader.sampler: {loader.sampler!r} needs labels")
    labels, present = dataset.labels.values, dataset.labels.present
    if not isinstance(dataset, FrameDataset):  # a volume's or a patch's label is its first frame's
        first = dataset.first_rows()
        labels, present = labels[first], present[first]
    weights = present.astype(np.float64)  # unlabeled items (unlabeled: keep) are never drawn
    if loader.sampler == "class_balanced":
        weights[present] = class_balanced_weights(labels[present])
    return WeightedSampler(weights, seed=loader.seed)


#: What a loader serves: ``train`` draws with ``loader.sampler``; ``val`` and ``test`` read in order.
STAGES = ("train", "val", "test")


def build_dataloader(
    cfg: Config,
    dataset: AHIDataset | None = None,
    *,
    stage: str = "train",
    loader_class: type[DataLoader[Any]] = DataLoader,
    collate_fn: Any = None,
) -> DataLoader[Any]:
    """A DataLoader with the config's sampler, batch size and workers: the one loader builder.

    ``stage="train"`` draws with ``loader.sampler``; ``"val"`` and ``"test"`` read every item
    once in index order (sharded across ranks, never shuffled). Lightning's
    :class:`~ahi_torch.integrations.lightning.AHIDataModule` calls this with
    ``loader_class=StatefulDataLoader``, so a config trains the same way under either.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage must be one of {', '.join(STAGES)}, not {stage!r}")
    dataset = dataset if dataset is not None else build_dataset(cfg)
    loader = cfg.loader
    training = stage == "train"
    return make_loader(
        dataset,
        build_sampler(cfg, dataset) if training else ShuffleSampler(dataset, shuffle=False),
        batch_size=loader.batch_size,
        num_workers=loader.num_workers,
        drop_last=loader.drop_last and training,
        persistent_workers=loader.persistent_workers,
        multiprocessing_context=loader.multiprocessing_context,
        collate_fn=collate_fn,
        loader_class=loader_class,
    )


def make_loader(
    dataset: Any,
    sampler: Sampler[int],
    *,
    batch_size: int,
    num_workers: int,
    drop_last: bool = False,
    persistent_workers: bool = True,
    multiprocessing_context: str | None = None,
    collate_fn: Any = None,
    loader_class: type[DataLoader[Any]] = DataLoader,
) -> DataLoader[Any]:
    """The one place a DataLoader is made: worker-only options are dropped when there are no workers."""
    return loader_class(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        persistent_workers=persistent_workers and num_workers > 0,
        multiprocessing_context=multiprocessing_context if num_workers > 0 else None,
        collate_fn=collate_fn,
    )


def write_manifest(
    cfg: Config, dataset: AHIDataset, output_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """``manifest.json`` next to a run's outputs: config, its hash, the index version, versions."""
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "config_hash": config_hash(cfg),
        "index_version": dataset.index_version,
        "items": len(dataset),
        "classes": dataset.classes,
        "ahi_torch": __version__,
        "python": platform.python_version(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": to_dict(cfg),
        **(extra or {}),
    }
    path = directory / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2, default=str))
    return path
