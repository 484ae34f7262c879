"""Config-driven builds: YAML → validated frozen dataclasses → index, dataset, DataLoader, manifest.

>>> from ahi_torch import config
>>> cfg = config.load("configs/ct-volumes.yaml", overrides=["loader.num_workers=4"])
>>> loader = config.build_dataloader(cfg)
"""

from .build import (
    build_cache,
    build_client,
    build_dataloader,
    build_dataset,
    build_fetcher,
    build_index_from_config,
    build_sampler,
    make_loader,
    resolve_datastore,
    write_manifest,
)
from .loading import apply_overrides, config_hash, from_dict, load, to_dict
from .schema import Config

__all__ = [
    "Config",
    "apply_overrides",
    "build_cache",
    "build_client",
    "build_dataloader",
    "build_dataset",
    "build_fetcher",
    "build_index_from_config",
    "build_sampler",
    "config_hash",
    "from_dict",
    "load",
    "make_loader",
    "resolve_datastore",
    "to_dict",
    "write_manifest",
]
