"""Build and refresh a FrameIndex from SearchImageSets and GetImageSetMetadata.

>>> from ahi_torch.index import build_index, refresh_index, search
>>> index = build_index(client, datastore_id, searches=[search.Search(search.patient_id("P1"))])
>>> index.save("runs/p1.parquet")
>>> fresher, stats = refresh_index(client, index)     # refetches only changed image sets

Every search is paged to the end; several searches are unioned; ``partitions=N`` splits each
search into N ``createdAt`` (or ``updatedAt``) ranges fetched concurrently, for large data
stores. Metadata is fetched for each image set at the version the search reported, with
bounded concurrency and a progress bar; rows are sorted by patient, study, series and slice so
the same content always gives the same row order.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from ..client import AHIClient
from ..client.quotas import AWS_QUOTAS
from ..errors import ConfigError
from ..metadata import ImageSetMetadata
from .columns import RowBuffer, epoch_seconds, sort_rows
from .frame_index import FrameIndex, new_info
from .search import Search

SORT_KEYS = [
    ("patient_id", "ascending"),
    ("study_instance_uid", "ascending"),
    ("series_instance_uid", "ascending"),
    ("image_set_id", "ascending"),
    ("slice_index", "ascending"),
]
PARTITION_FIELDS = ("createdAt", "updatedAt")


@dataclass(frozen=True)
class RefreshStats:
    """What :func:`refresh_index` did."""

    added: int
    changed: int
    removed: int
    unchanged: int
    seconds: float

    @property
    def fetched(self) -> int:
        return self.added + self.changed


def _partitioned(client: AHIClient, datastore_id: str, base: Search, partitions: int, field: str) -> list[Search]:
    if partitions <= 1:
        return [base]
    if field not in PARTITION_FIELDS:
        raise ConfigError(f"partition_field must be one of {', '.join(PARTITION_FIELDS)}, not {field!r}")
    if len(base.filters) >= 2:
        raise ConfigError("a partitioned search can have at most one filter of its own (AHI allows two in total)")
    probe = Search(*base.filters, sort_field=field, descending=False)
    first = next(
        iter(client.iter_image_sets(datastoreId=datastore_id, searchCriteria=probe.criteria(), maxResults=1)), None
    )
    if first is None:
        return [base]
    low = first[field] - dt.timedelta(milliseconds=1)  # services may round what they report
    high = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    step = (high - low) / partitions
    bounds = [low + step * i for i in range(partitions)] + [high]
    make = {"createdAt": "created_between", "updatedAt": "updated_between"}[field]
    from . import search as filters

    return [base.with_filter(getattr(filters, make)(bounds[i], bounds[i + 1])) for i in range(partitions)]


def search_image_sets(
    client: AHIClient,
    datastore_id: str,
    searches: Sequence[Search],
    *,
    partitions: int = 1,
    partition_field: str = "createdAt",
    include_non_primary: bool = False,
    max_workers: int = 4,
) -> dict[str, dict[str, Any]]:
    """Union of every search's results (each paged to the end): image set ID → summary."""
    queries = [q for base in searches for q in _partitioned(client, datastore_id, base, partitions, partition_field)]
    found: dict[str, dict[str, Any]] = {}

    def run(query: Search) -> list[dict[str, Any]]:
        return list(client.iter_image_sets(datastoreId=datastore_id, searchCriteria=query.criteria(), maxResults=50))

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(queries)))) as pool:
        for summaries in pool.map(run, queries):
            for summary in summaries:
                if include_non_primary or summary.get("isPrimary", True):
                    found[summary["imageSetId"]] = summary
    return found


def _fetch_rows(
    client: AHIClient,
    datastore_id: str,
    summaries: Iterable[dict[str, Any]],
    extra_tags: Sequence[str],
    max_workers: int,
    progress: bool,
) -> pa.Table:
    todo = list(summaries)
    rows = RowBuffer(extra_tags)

    def fetch(summary: dict[str, Any]) -> tuple[dict[str, Any], ImageSetMetadata]:
        version = summary.get("version")
        document = client.get_image_set_metadata(
            datastoreId=datastore_id, imageSetId=summary["imageSetId"], versionId=str(version) if version else None
        )
        return summary, ImageSetMetadata.parse(document)

    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        futures = [pool.submit(fetch, s) for s in todo]
        # unit " image sets" reads "12 image sets"; no bar at all when stderr is not a terminal.
        shown = progress and sys.stderr.isatty()
        bar = tqdm(total=len(futures), desc="metadata", unit=" image sets", disable=not shown)
        try:
            for future in as_completed(futures):
                summary, image_set = future.result()
                rows.append(summary, image_set, datastore_id)
                bar.update()
        finally:
            bar.close()
    return rows.table()


#: The operations an index build or refresh makes, at AHI's per-account rates.
INDEX_OPERATIONS = ("SearchImageSets", "GetImageSetMetadata")


def within_quota(client: AHIClient) -> AHIClient:
    """The client, held to AWS's quotas for the index operations when it talks to AWS without limits.

    An index build runs ``max_workers`` metadata calls at once and would otherwise outrun AHI's
    50 GetImageSetMetadata/s (25 SearchImageSets/s) and be throttled; held to them it reaches
    the quota and stays there. A client with ``rate_limits`` of its own, or one for a local
    endpoint, is used as it is.
    """
    config = client.config
    if config.quotas or config.endpoint_url is not None:
        return client
    return AHIClient(config, rate_limits={operation: AWS_QUOTAS[operation] for operation in INDEX_OPERATIONS})


def build_index(
    client: AHIClient,
    datastore_id: str,
    *,
    searches: Sequence[Search] | None = None,
    filters: Sequence[dict[str, Any]] = (),
    partitions: int = 1,
    partition_field: str = "createdAt",
    include_non_primary: bool = False,
    extra_tags: Sequence[str] = (),
    max_workers: int = 8,
    progress: bool = True,
) -> FrameIndex:
    """Search a data store and index every frame of every image set found.

    Args:
        searches: several :class:`Search` queries, unioned. Default: one search with ``filters``
            (none: the whole data store).
        partitions: split each search into this many time ranges fetched concurrently.
        include_non_primary: keep non-primary image sets (conflicting imports); off by default.
        extra_tags: more DICOM keywords to keep as text columns (labels, splits).
        max_workers: concurrent GetImageSetMetadata calls.
    """
    queries = list(searches) if searches else [Search(*filters)]
    client = within_quota(client)
    summaries = search_image_sets(
        client,
        datastore_id,
        queries,
        partitions=partitions,
        partition_field=partition_field,
        include_non_primary=include_non_primary,
        max_workers=max_workers,
    )
    table = _fetch_rows(client, datastore_id, summaries.values(), extra_tags, max_workers, progress)
    info = new_info(datastore_id, [q.describe() for q in queries], list(extra_tags), include_non_primary)
    info.update(partitions=partitions, partition_field=partition_field)
    return FrameIndex(sort_rows(table, SORT_KEYS), info)


def refresh_index(
    client: AHIClient, index: FrameIndex, *, max_workers: int = 8, progress: bool = True
) -> tuple[FrameIndex, RefreshStats]:
    """Re-run the index's searches; refetch metadata only for new or changed image sets."""
    started = time.perf_counter()
    info = index.info
    datastore_id = info.get("datastore_id")
    if not datastore_id:
        raise ConfigError("this index records no data store; rebuild it with build_index")
    queries = [Search.from_description(filters) for filters in info.get("searches") or [[]]]
    client = within_quota(client)
    summaries = search_image_sets(
        client,
        datastore_id,
        queries,
        partitions=int(info.get("partitions", 1)),
        partition_field=str(info.get("partition_field", "createdAt")),
        include_non_primary=bool(info.get("include_non_primary", False)),
        max_workers=max_workers,
    )
    known = index.image_sets()
    unchanged, changed, added = [], [], []
    for image_set_id, summary in summaries.items():
        updated_at = epoch_seconds(summary.get("updatedAt"))
        if image_set_id not in known:
            added.append(summary)
        elif known[image_set_id] == (int(summary.get("version") or 0), updated_at):
            unchanged.append(image_set_id)
        else:
            changed.append(summary)
    removed = len(set(known) - set(summaries))
    ids = index.table.column("image_set_id")
    kept = index.table.filter(pc.is_in(ids, value_set=pa.array(unchanged, pa.string())))
    extra_tags = index.extra_tags
    fresh = _fetch_rows(client, datastore_id, [*added, *changed], extra_tags, max_workers, progress)
    table = sort_rows(pa.concat_tables([kept, fresh.cast(kept.schema)]).combine_chunks(), SORT_KEYS)
    refreshed = FrameIndex(table, {**info, "built_at": time.time()})
    stats = RefreshStats(len(added), len(changed), removed, len(unchanged), time.perf_counter() - started)
    return refreshed, stats
