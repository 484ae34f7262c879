"""The configuration schema: frozen dataclasses, one per section of a ``configs/*.yaml`` file.

Every field has a default, so a config names only what differs. Unknown keys and wrong values
are rejected with a message naming the key and what is allowed (see :mod:`.loading`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..cache.frame_cache import MODES as CACHE_MODES
from ..client.config import ClientConfig
from ..datasets import GROUP_COLUMNS, UNLABELED
from ..datasets.labels import JOIN_KEYS, VALUE_TYPES, LabelTypes
from ..datasets.patches import check_patch_options
from ..datasets.policy import MODES as ERROR_POLICIES
from ..errors import ConfigError
from ..fetch import RetryPolicy
from ..fetch.fetcher import check_fetch_options
from ..index.search import FILTERS, named_filter
from ..samplers.splits import GROUP_KEYS as SPLIT_KEYS
from ..transforms import create


def _at_least(section: object, minimum: float, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if value < minimum:
            raise ConfigError(f"{name} must be at least {minimum:g}, not {value:g}")


def _one_of(section: object, name: str, allowed: tuple[str, ...]) -> None:
    """Check a value against the option list its runtime class defines (None is left to the default)."""
    value = getattr(section, name)
    if value is not None and value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _positive(section: object, *names: str) -> None:
    for name in names:
        value = getattr(section, name)
        if not value > 0:
            raise ConfigError(f"{name} must be positive, not {value:g}")


@dataclass(frozen=True)
class ConnectionConfig(ClientConfig):
    """How to reach AHI: the fields of :class:`~ahi_torch.client.ClientConfig`, loaded as they are.

    ``endpoint_url`` points at a local AHI; leave it null for AWS. The one difference: a config
    without ``region`` means ``us-east-1``, so a config file alone says where it connects.
    """

    region: str | None = "us-east-1"


@dataclass(frozen=True)
class DatastoreConfig:
    """Which data store: by ``id``, or by ``name`` (the ACTIVE data store with that name)."""

    id: str | None = None
    name: str | None = None


#: A filter's value: an ID (always text, so ``0123`` keeps its zero), a flag, or ``[start, end]``.
FilterValue = str | bool | list[str]


@dataclass(frozen=True)
class SearchConfig:
    """What to index. ``filters`` is one search (at most two filters, ANDed); ``searches`` is a
    list of such filter lists, ORed. Filter keys are :data:`ahi_torch.index.search.FILTERS`:
    patient_id, accession_number, study_id, study_uid, series_uid, is_primary, created_between,
    updated_between, study_date_between. Every filter is checked when the config loads."""

    filters: list[dict[str, FilterValue]] = field(default_factory=list)
    searches: list[list[dict[str, FilterValue]]] = field(default_factory=list)
    partitions: int = 1
    partition_field: Literal["createdAt", "updatedAt"] = "createdAt"
    include_non_primary: bool = False
    extra_tags: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _at_least(self, 1, "partitions")
        if self.filters and self.searches:
            raise ConfigError("search: give filters (one search) or searches (several), not both")
        groups = [("search.filters", self.filters)] if self.filters else []
        groups += [(f"search.searches[{k}]", group) for k, group in enumerate(self.searches)]
        for where, group in groups:
            if len(group) > 2:
                raise ConfigError(f"{where}: AHI allows at most two filters per search")
            for i, spec in enumerate(group):
                if len(spec) != 1:
                    raise ConfigError(f"{where}[{i}]: each filter has exactly one key (one of {', '.join(FILTERS)})")
                ((name, value),) = spec.items()
                named_filter(name, value, f"{where}[{i}]")


@dataclass(frozen=True)
class IndexConfig:
    """Where the Parquet index lives; ``refresh`` re-checks AHI and refetches changed sets."""

    path: str = "runs/index.parquet"
    refresh: bool = True
    max_workers: int = 8

    def __post_init__(self) -> None:
        _at_least(self, 1, "max_workers")


@dataclass(frozen=True)
class LabelsConfig:
    """Labels from an index ``column``, or from a ``table`` (CSV/Parquet) joined on the index
    column ``join_on``, the table's ``key`` column matching it and its ``value`` column holding
    the label. (Not ``on``: YAML 1.1 reads a bare ``on`` key as the boolean true.)"""

    column: str | None = None
    table: str | None = None
    join_on: str = "series_instance_uid"
    key: str | None = None
    value: str = "label"
    value_type: str | None = None
    #: class names in class-index order; a label outside them is an error naming its row.
    classes: list[str] | None = None
    unlabeled: str = "error"

    def __post_init__(self) -> None:
        _one_of(self, "join_on", JOIN_KEYS)
        _one_of(self, "unlabeled", UNLABELED)
        _one_of(self, "value_type", VALUE_TYPES)
        LabelTypes(self.value_type, tuple(self.classes) if self.classes is not None else None)
        if bool(self.column) == bool(self.table):
            raise ConfigError("labels: give either column or table")


@dataclass(frozen=True)
class SplitConfig:
    """Patient-grouped split; ``use`` picks the split this dataset serves (null: all rows)."""

    fractions: dict[str, float] = field(default_factory=dict)
    by: str = "patient_id"
    seed: int = 0
    use: str | None = None

    def __post_init__(self) -> None:
        _one_of(self, "by", SPLIT_KEYS)
        if any(f < 0 for f in self.fractions.values()):
            raise ConfigError(f"fractions must not be negative: {self.fractions}")
        total = sum(self.fractions.values())
        if self.fractions and abs(total - 1) > 1e-3:
            raise ConfigError(f"fractions must add up to 1, not {total:g}")
        if self.use is not None and self.use not in self.fractions:
            raise ConfigError(f"use: {self.use!r} is not one of {', '.join(self.fractions) or 'the fractions'}")


@dataclass(frozen=True)
class TransformConfig:
    """One transform by name (see :mod:`ahi_torch.transforms`) or ``module:Class`` path."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        create(self.name, self.args)  # an unknown name or argument fails when the config loads


@dataclass(frozen=True)
class IntensityConfig:
    rescale: bool = True
    window: list[float] | None = None
    dicom_window: bool = False

    def __post_init__(self) -> None:
        if self.window is not None and (len(self.window) != 2 or not self.window[1] > 0):
            raise ConfigError(f"window must be [center, width] with a positive width, not {self.window}")
        if self.window is not None and self.dicom_window:
            raise ConfigError("give window or dicom_window, not both")


@dataclass(frozen=True)
class FetchConfig:
    """How frames are fetched: :class:`~ahi_torch.fetch.FrameFetcher`'s fields under the same names.

    The fetcher's client comes from ``connection:`` and its cache from ``cache:``; everything
    else about getting a frame is here (``retry`` is a :class:`~ahi_torch.fetch.RetryPolicy`).
    """

    verify: bool = True
    reduce: int = 0
    max_workers: int = 8
    decoder: str | None = None
    progressive: bool = True
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        check_fetch_options(self.reduce, self.max_workers, self.decoder)


@dataclass(frozen=True)
class PatchesConfig:
    """Patches of whole-slide images (``view: patches``): :class:`~ahi_torch.datasets.PatchDataset`'s options.

    ``level`` or ``mpp`` (µm per pixel, resized from the nearest finer level); neither means level 0.
    """

    size: int = 256
    level: int | None = None
    mpp: float | None = None
    stride: int | None = None
    tissue: float | None = None

    def __post_init__(self) -> None:
        check_patch_options(self.size, self.chosen_level, self.mpp, self.stride, self.tissue)

    @property
    def chosen_level(self) -> int | None:
        return 0 if self.level is None and self.mpp is None else self.level


@dataclass(frozen=True)
class CacheConfig:
    enabled: bool = True
    dir: str | None = None
    size_gb: float = 20.0
    mode: str = "decoded"

    def __post_init__(self) -> None:
        _positive(self, "size_gb")
        _one_of(self, "mode", CACHE_MODES)


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int = 16
    num_workers: int = 2
    sampler: Literal["sequential", "shuffle", "locality", "weighted", "class_balanced", "node_pinned"] = "shuffle"
    #: what ``node_pinned`` keeps on one node: image sets (default) or patients, studies, series.
    pin_by: str = "image_set_id"
    seed: int = 0
    drop_last: bool = False
    persistent_workers: bool = True
    multiprocessing_context: Literal["fork", "spawn", "forkserver"] | None = None
    error_policy: str = "raise"
    failure_log: str | None = None

    def __post_init__(self) -> None:
        _at_least(self, 1, "batch_size")
        _at_least(self, 0, "num_workers")
        _one_of(self, "pin_by", GROUP_COLUMNS)
        _one_of(self, "error_policy", ERROR_POLICIES)


@dataclass(frozen=True)
class Config:
    """A complete, reproducible description of a dataset and its loader."""

    name: str = "ahi-torch"
    connection: ConnectionConfig = field(default_factory=ConnectionConfig)
    datastore: DatastoreConfig = field(default_factory=DatastoreConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    view: Literal["frames", "volumes", "patches"] = "frames"
    labels: LabelsConfig | None = None
    split: SplitConfig | None = None
    intensity: IntensityConfig = field(default_factory=IntensityConfig)
    transforms: list[TransformConfig] = field(default_factory=list)
    fetch: FetchConfig = field(default_factory=FetchConfig)
    patches: PatchesConfig = field(default_factory=PatchesConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    output_dir: str = "runs"
