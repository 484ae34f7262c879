"""What frame and volume datasets share: the fetcher, labels, the error policy, pickling."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..cache import FrameCache
from ..client import AHIClient
from ..counters import COUNTERS, Counters, counting
from ..errors import (
    CacheTooSmallWarning,
    ConfigError,
    EndpointUnreachable,
    MissingGeometryWarning,
    ModalityLUTWarning,
    SampleError,
)
from ..fetch import FrameFetcher, FrameRef, attempts_of
from ..fetch.retry import ENDPOINT_FAILURES
from ..index import FrameIndex
from ._convert import Intensity
from ._table import FrameTable
from .labels import LabelSpec, ResolvedLabels, resolve_labels
from .policy import ErrorPolicy, FailureLog, FailureRecord, replacements, sleep_before_retry
from .stats import EpochStats

log = logging.getLogger(__name__)

Transform = Callable[[dict[str, Any]], Any]

#: What a dataset does with frames that have no label.
UNLABELED = ("error", "drop", "keep")
#: Index columns an item can be grouped by (for node pinning and locality).
GROUP_COLUMNS = ("image_set_id", "patient_id", "study_instance_uid", "series_instance_uid")


def warn_missing_geometry(index: FrameIndex) -> None:
    """Say once, with counts and an example series, which frames' spacing or placement is a stand-in."""
    table = index.table
    problems = []
    for column, what in (
        ("pixel_spacing_row", "no pixel spacing (1 mm is used)"),
        ("image_orientation", "no orientation (the identity is used)"),
        ("image_position", "no position of their own (an origin of 0 is used)"),
    ):
        missing = table.column(column).is_null().to_numpy(zero_copy_only=False)
        if missing.any():
            example = table.column("series_instance_uid")[int(np.flatnonzero(missing)[0])].as_py()
            problems.append(f"{int(missing.sum())} of {len(index)} frames have {what}, e.g. series {example}")
    if problems:
        warnings.warn(
            "; ".join(problems) + ": their meta['affine'] and meta['spacing'] are not physical",
            MissingGeometryWarning,
            stacklevel=3,
        )


def warn_lookup_tables(index: FrameIndex) -> None:
    """Say once which frames map their values through a Modality LUT Sequence, which is not applied."""
    uses_lut = index.table.column("modality_lut").fill_null(False).to_numpy(zero_copy_only=False)
    if uses_lut.any():
        example = index.table.column("series_instance_uid")[int(np.flatnonzero(uses_lut)[0])].as_py()
        warnings.warn(
            f"{int(uses_lut.sum())} of {len(index)} frames map stored values through a Modality LUT Sequence, "
            f"which ahi_torch does not apply (e.g. series {example}): rescale=True leaves them as stored values",
            ModalityLUTWarning,
            stacklevel=3,
        )


#: How many more frames an encoded cache holds than a decoded one (HTJ2K lossless on CT, measured in the bench).
ENCODED_GAIN = 2.3


def decoded_bytes(index: FrameIndex, reduce: int = 0) -> int:
    """Bytes the decoded pixels of every frame of ``index`` take (at ``reduce``)."""
    table = index.table

    def values(name: str) -> np.ndarray:
        return np.asarray(table.column(name).fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)

    side = 2**reduce
    rows, columns = -(-values("rows") // side), -(-values("columns") // side)
    samples = np.maximum(values("samples_per_pixel"), 1)
    sample_bytes = np.maximum(-(-values("bits_allocated") // 8), 1)
    return int((rows * columns * samples * sample_bytes).sum())


def warn_cache_too_small(index: FrameIndex, cache: FrameCache, reduce: int = 0) -> None:
    """Say once when the cache cannot hold what a node reads each epoch, with the two ways out."""
    needed = decoded_bytes(index, reduce)
    if cache.mode == "encoded":
        needed = int(needed / ENCODED_GAIN)
    if needed <= cache.size_limit:
        return
    gib = 2**30
    held = cache.size_limit / needed
    ways = [f"a size limit of at least {needed / gib:.1f} GiB"]
    if cache.mode == "decoded":
        ways.insert(
            0, f"cache mode 'encoded' (about {ENCODED_GAIN:g}x more frames: {needed / ENCODED_GAIN / gib:.1f} GiB)"
        )
    warnings.warn(
        f"the frame cache at {cache.directory} holds {cache.size_limit / gib:.1f} GiB, and this dataset's frames take "
        f"{needed / gib:.1f} GiB {cache.mode}: each epoch after the first finds about {held:.0%} of them cached "
        f"and fetches the rest again. Ways out: {' or '.join(ways)}; under node_pinned each node needs only its "
        "share of the groups",
        CacheTooSmallWarning,
        stacklevel=3,
    )


def labelled_rows(index: FrameIndex, labels: LabelSpec, unlabeled: str) -> tuple[FrameIndex, ResolvedLabels | None]:
    """The index rows a dataset serves and their labels, as ``unlabeled`` says (error, drop or keep)."""
    if unlabeled not in UNLABELED:
        raise ConfigError(f"unlabeled must be one of {', '.join(UNLABELED)}, not {unlabeled!r}")
    resolved = resolve_labels(index, labels)
    if resolved is None:
        return index, None
    if unlabeled == "keep" and resolved.values.dtype.kind == "i":
        clash = np.flatnonzero(resolved.present & (resolved.values == -1))
        if len(clash):
            raise ConfigError(
                f"label -1 (index row {int(clash[0])}) is the marker of an unlabeled frame under "
                "unlabeled='keep'; use other class numbers, or unlabeled='drop'"
            )
    if resolved.present.all():
        return index, resolved
    missing = int((~resolved.present).sum())
    if unlabeled == "error":
        raise ConfigError(f"{missing} of {len(index)} frames have no label (pass unlabeled='drop' to leave them out)")
    if unlabeled == "drop":
        kept = resolved.present
        return index.filter(kept), ResolvedLabels(resolved.values[kept], resolved.present[kept], resolved.classes)
    return index, resolved


class AHIDataset(Dataset[Any]):
    """Base of :class:`FrameDataset`, :class:`VolumeDataset` and :class:`PatchDataset`; see their docstrings."""

    #: Whether items place themselves in the patient (affine, spacing), so missing geometry is worth a warning.
    warns_missing_geometry = True

    def __init__(
        self,
        index: FrameIndex,
        source: AHIClient | FrameFetcher,
        *,
        labels: LabelSpec = None,
        unlabeled: str = "error",
        transform: Transform | None = None,
        rescale: bool = True,
        window: tuple[float, float] | str | None = None,
        dtype: torch.dtype | None = torch.float32,
        error_policy: ErrorPolicy | str = "raise",
        table_dir: str | Path | None = None,
    ) -> None:
        if len(index) == 0:
            raise ConfigError("the index is empty: nothing to load (check the search filters)")
        index, resolved = labelled_rows(index, labels, unlabeled)
        self.frame_index = index
        self.index_version = index.version
        if self.warns_missing_geometry:
            warn_missing_geometry(index)
        if rescale:
            warn_lookup_tables(index)
        # A copy of the settings: one fetcher given to a train and a val dataset must not share their threads.
        self.fetcher: FrameFetcher = (
            dataclasses.replace(source) if isinstance(source, FrameFetcher) else FrameFetcher(source)
        )
        if self.fetcher.cache is not None:
            warn_cache_too_small(index, self.fetcher.cache, self.fetcher.reduce)
        self.frame_table = FrameTable(index, table_dir, labels=resolved.values if resolved is not None else None)
        self.labels = resolved
        self.transform = transform
        self.intensity = Intensity(rescale=rescale, window=window, dtype=dtype)
        self.policy = ErrorPolicy.of(error_policy)
        self.failures = FailureLog(self.policy.failure_log)
        self.stats = EpochStats()

    # --- what subclasses provide ------------------------------------------------------------------

    def __len__(self) -> int:
        raise NotImplementedError

    def _rows(self, index: int) -> np.ndarray:
        """Index rows whose frames make item ``index``."""
        raise NotImplementedError

    def _build(self, index: int, frames: list[np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def _build_batch(self, indices: Sequence[int], frames: Sequence[list[np.ndarray]]) -> list[dict[str, Any]]:
        """The items of a batch whose frames all arrived; a subclass reads the batch's columns once."""
        return [self._build(index, item_frames) for index, item_frames in zip(indices, frames, strict=True)]

    # --- shared machinery -------------------------------------------------------------------------

    @property
    def classes(self) -> list[str] | None:
        return self.labels.classes if self.labels is not None else None

    def label_of_row(self, row: int) -> torch.Tensor | None:
        labels = self.labels_of_rows(np.array([row]))
        return None if labels is None else labels[0]

    def labels_of_rows(self, rows: np.ndarray) -> torch.Tensor | None:
        """The labels of index ``rows`` (class indices as long, values as float32), or None without labels."""
        column = self.frame_table.label
        if self.labels is None or column is None:
            return None
        values = np.asarray(column[rows])
        return torch.tensor(values, dtype=torch.float32 if self.labels.values.dtype.kind == "f" else torch.long)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["frame_index"] = None  # workers use the flat FrameTable; the Arrow table stays home
        if self.labels is not None:  # workers read labels from the shared table: keep only their type
            state["labels"] = dataclasses.replace(
                self.labels, values=self.labels.values[:0], present=self.labels.present[:0]
            )
        state["failures"] = FailureLog(self.policy.failure_log)
        return state

    def group_keys(self, column: str = "image_set_id") -> np.ndarray:
        """One key per item, its first frame's ``column``: what :class:`NodePinnedSampler` pins to nodes.

        >>> NodePinnedSampler(dataset, groups=dataset.group_keys("patient_id"))
        """
        if column not in GROUP_COLUMNS:
            raise ConfigError(f"items can be grouped by {', '.join(GROUP_COLUMNS)}, not {column!r}")
        return self.frame_table.texts(column, self.first_rows())

    def first_rows(self) -> np.ndarray:
        """The index row of every item's first frame."""
        return np.fromiter((int(self._rows(i)[0]) for i in range(len(self))), dtype=np.int64, count=len(self))

    def _check(self, index: int) -> None:
        """Raise when item ``index`` must fail before any of its frames is fetched."""

    def refs(self, index: int) -> list[FrameRef]:
        """What the fetcher needs for each frame of item ``index``."""
        self._check(index)
        return self.frame_table.refs(self._rows(index))

    def _finish(self, item: dict[str, Any]) -> Any:
        return self.transform(item) if self.transform is not None else item

    def _load(self, index: int) -> Any:
        frames = self.fetcher.get_many(self.refs(index))
        return self._finish(self._build(index, frames))

    def _describe(self, index: int) -> str:
        rows = self._rows(index)
        first, table = int(rows[0]), self.frame_table
        return f"image set {table.text('image_set_id', first)} frame {table.text('frame_id', first)}"

    def _fail(self, index: int, error: Exception, replaced_by: int | None) -> None:
        if replaced_by is not None:
            COUNTERS.replaced += 1
        else:
            COUNTERS.failed += 1
        self.failures.record(FailureRecord(index, replaced_by, str(error), type(error).__name__, self._describe(index)))

    @contextmanager
    def _counted(self) -> Iterator[None]:
        """Add what this process counts inside the block to :attr:`stats` (even when it raises)."""
        counted = Counters()
        try:
            with counting() as counted:
                yield
        finally:
            self.stats.record(counted)  # filled in by now: counting() has ended

    def _served(self, indices: Sequence[int]) -> None:
        COUNTERS.items_served += len(indices)
        COUNTERS.frames_served += sum(len(self._rows(i)) for i in indices)

    def _recover(self, index: int, error: Exception) -> Any:
        """Apply the error policy to item ``index``, whose first attempt failed with ``error``."""
        policy = self.policy
        if isinstance(error, (*ENDPOINT_FAILURES, EndpointUnreachable)):
            # The endpoint or the account failed, not this sample: every replacement or retry
            # would fail the same way, each after its own timeouts.
            self._fail(index, error, None)
            raise error
        if policy.mode == "retry" and attempts_of(error):
            # The fetch layer already spent its attempts on this frame; more would only
            # multiply the requests to a quota-bound service.
            self._fail(index, error, None)
            raise SampleError(
                f"sample {index} ({self._describe(index)}) failed after {attempts_of(error)} attempts: {error}"
            ) from error
        if policy.mode == "retry":
            for attempt in range(policy.retries):
                sleep_before_retry(policy, attempt)
                COUNTERS.retried += 1
                try:
                    return self._load(index)
                except Exception as again:
                    error = again
            self._fail(index, error, None)
            raise SampleError(
                f"sample {index} ({self._describe(index)}) failed after {policy.retries + 1} attempts: {error}"
            ) from error
        if policy.mode == "skip":
            candidates = replacements(index, len(self), policy.max_replacements)
            for candidate in candidates:
                try:
                    item = self._load(candidate)
                except Exception:
                    continue
                self._fail(index, error, candidate)
                log.warning("sample %d replaced by %d after %s", index, candidate, error)
                return item
            self._fail(index, error, None)
            raise SampleError(
                f"sample {index} ({self._describe(index)}) and {len(candidates)} replacements failed: {error}"
            ) from error
        self._fail(index, error, None)
        raise SampleError(f"sample {index} ({self._describe(index)}) failed: {error}") from error

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)}")
        with self._counted():
            try:
                item = self._load(index)
            except Exception as error:
                item = self._recover(index, error)
            self._served([index])
        return item

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        """A whole batch, its frames fetched concurrently (PyTorch's map fetcher calls this).

        References, geometry and identifiers come from the shared table a column at a time for the
        whole batch; only items whose fetch or build failed go through the error policy one by one.
        """
        indices = [int(index) for index in indices]
        with self._counted():
            outcomes = self._build_arrived(indices, self._gather(self._submit_batch(indices)))
            items = []
            for index, outcome in zip(indices, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    items.append(self._recover(index, outcome))
                    continue
                try:
                    items.append(self._finish(outcome))
                except Exception as error:  # the transform's
                    items.append(self._recover(index, error))
            self._served(indices)
        return items

    def _submit_batch(self, indices: list[int]) -> list[list[Future[np.ndarray]] | Exception]:
        """Each index's frame futures, submitted together; or why the index was refused before any fetch."""
        rows: list[np.ndarray] = []
        refusals: list[Exception | None] = []
        for index in indices:
            try:
                self._check(index)
            except Exception as error:
                rows.append(np.zeros(0, dtype=np.int64))
                refusals.append(error)
                continue
            rows.append(self._rows(index))
            refusals.append(None)
        futures = self.fetcher.submit_many(self.frame_table.refs(np.concatenate(rows)))
        ends = np.cumsum([len(item_rows) for item_rows in rows]).tolist()
        return [
            refusal if refusal is not None else futures[end - len(item_rows) : end]
            for item_rows, end, refusal in zip(rows, ends, refusals, strict=True)
        ]

    @staticmethod
    def _gather(submitted: list[list[Future[np.ndarray]] | Exception]) -> list[list[np.ndarray] | Exception]:
        """Each index's frames, or the error its refusal or its first failing frame raised."""
        outcomes: list[list[np.ndarray] | Exception] = []
        for item_futures in submitted:
            if isinstance(item_futures, Exception):
                outcomes.append(item_futures)
                continue
            try:
                outcomes.append([future.result() for future in item_futures])
            except Exception as error:
                outcomes.append(error)
        return outcomes

    def _build_arrived(
        self, indices: list[int], outcomes: list[list[np.ndarray] | Exception]
    ) -> list[dict[str, Any] | Exception]:
        """Each index's item where its frames arrived (built together; one by one if that fails), else its error."""
        results: list[dict[str, Any] | Exception] = []
        positions, frames = [], []
        for position, outcome in enumerate(outcomes):
            results.append(outcome if isinstance(outcome, Exception) else {})
            if not isinstance(outcome, Exception):
                positions.append(position)
                frames.append(outcome)
        try:
            items = self._build_batch([indices[p] for p in positions], frames)
            for position, item in zip(positions, items, strict=True):
                results[position] = item
        except Exception:
            # One index's frames do not fit its description: build them one by one to find it.
            for position, item_frames in zip(positions, frames, strict=True):
                try:
                    results[position] = self._build(indices[position], item_frames)
                except Exception as error:
                    results[position] = error
        return results
