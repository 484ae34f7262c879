"""VolumeDataset: one item per series (3D), slices in geometric order."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, overload

import numpy as np
import torch

from ..errors import ConfigError, GeometryError, IrregularSeriesWarning, MetadataError
from ..index import FrameIndex
from ..metadata.geometry import SPACE
from ._base import AHIDataset
from ._convert import apply_intensity, to_channels_first
from ._geometry import spacing_of, volume_affine

#: What a volume of an irregular series does: warn once and carry ``meta["regular"] = False``, or
#: fail (the error policy then raises, skips or retries it).
IRREGULAR_MODES = ("warn", "error")


class VolumeRows(Sequence[np.ndarray]):
    """Index rows of each volume: two numbers per volume when, as in a built index, they are runs.

    A list of row arrays costs 8 bytes per frame in every worker; an index sorted by series and
    slice (what :func:`~ahi_torch.index.build_index` writes) makes every volume a run
    ``start..stop``. Other orders keep their rows, concatenated.
    """

    def __init__(self, volumes: Sequence[np.ndarray]) -> None:
        lengths = np.array([len(rows) for rows in volumes], dtype=np.int64)
        runs = all(len(rows) < 2 or bool((np.diff(rows) == 1).all()) for rows in volumes)
        if runs:
            self.rows: np.ndarray | None = None
            self.starts = np.array([int(rows[0]) for rows in volumes], dtype=np.int64)
        else:
            self.rows = np.concatenate([np.asarray(rows, dtype=np.int64) for rows in volumes])
            self.starts = np.cumsum(lengths) - lengths
        self.stops = self.starts + lengths

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...
    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...
    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[u] for u in range(*index.indices(len(self)))]
        start, stop = int(self.starts[index]), int(self.stops[index])
        if self.rows is None:
            return np.arange(start, stop, dtype=np.int64)
        return self.rows[start:stop]


class VolumeDataset(AHIDataset):
    """Every series of an index as a volume ``(C, D, H, W)``, its frames fetched concurrently.

    >>> volumes = VolumeDataset(index, FrameFetcher(client, cache=FrameCache()), window=(40, 400))
    >>> item = volumes[0]
    >>> item["image"].shape, item["meta"]["spacing"], item["meta"]["space"], item["meta"]["regular"]
    (torch.Size([1, 64, 512, 512]), tensor([2.5, 0.7, 0.7]), 'LPS', True)

    Slices follow ImagePositionPatient along the slice normal (InstanceNumber as fallback), as
    the index orders them. ``meta["affine"]`` maps voxel ``(slice, row, column, 1)`` (the
    tensor's own spatial axes, in order) to millimetres in ``meta["space"]`` (``"LPS"``, DICOM's
    patient space); ``meta["spacing"]`` is (slice, row, column) in mm, the affine's column
    lengths. The transforms in :mod:`ahi_torch.transforms` keep both true; for MONAI use
    :mod:`ahi_torch.integrations.monai`, which hands over a ``MetaTensor`` in MONAI's convention.

    A series whose slices are not one evenly spaced stack (a missing slice, a duplicated
    position, uneven steps, several stacks, mixed orientations, no positions) has no affine that
    holds for every slice. Building the dataset warns naming such series, and their items carry
    ``meta["regular"] = False`` with the reason in ``meta["irregularity"]``; with
    ``irregular="error"`` loading one fails instead, and the error policy decides what happens.
    Takes the same arguments as :class:`FrameDataset`; a volume's label is its first frame's.
    """

    def __init__(self, index: FrameIndex, *args: Any, irregular: str = "warn", **kwargs: Any) -> None:
        if irregular not in IRREGULAR_MODES:
            raise ConfigError(f"irregular must be one of {', '.join(IRREGULAR_MODES)}, not {irregular!r}")
        super().__init__(index, *args, **kwargs)
        self.irregular = irregular
        self.volume_rows = VolumeRows([volume.rows for volume in self.frame_index.volumes()])
        self.irregularities = [self._irregularity(rows) for rows in self.volume_rows]
        self._warn_irregular()

    def _irregularity(self, rows: np.ndarray) -> str:
        """Why the volume made of index ``rows`` is not one evenly spaced stack, or ""."""
        table = self.frame_table
        first = int(rows[0])
        if len(rows) == 1:
            return ""
        if not table.series_regular[first]:
            return table.irregularity(first)
        if (np.diff(table.slice_index[rows]) != 1).any():
            expected = int(table.slice_count[first])
            return f"{len(rows)} of the series' {expected} slices are in the index, with gaps (a filter left them)"
        return ""

    def _warn_irregular(self) -> None:
        table = self.frame_table
        bad = [index for index, problem in enumerate(self.irregularities) if problem]
        if not bad:
            return
        named = "; ".join(
            f"series {table.text('series_instance_uid', int(self.volume_rows[index][0]))}: {self.irregularities[index]}"
            for index in bad[:5]
        )
        more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
        consequence = (
            "loading them fails (irregular='error')"
            if self.irregular == "error"
            else "their meta['regular'] is False and their affine does not hold for every slice"
        )
        warnings.warn(
            f"{len(bad)} of {len(self)} volumes are not evenly spaced stacks; {consequence}: {named}{more}",
            IrregularSeriesWarning,
            stacklevel=3,
        )

    def __len__(self) -> int:
        return len(self.volume_rows)

    def _rows(self, index: int) -> np.ndarray:
        return self.volume_rows[index]

    def _check(self, index: int) -> None:
        problem = self.irregularities[index]
        if problem and self.irregular == "error":
            series = self.frame_table.text("series_instance_uid", int(self.volume_rows[index][0]))
            raise GeometryError(f"series {series} is not an evenly spaced stack: {problem}")

    def _build(self, index: int, frames: list[np.ndarray]) -> dict[str, Any]:
        table = self.frame_table
        rows = self.volume_rows[index]
        first = int(rows[0])
        shapes = {frame.shape for frame in frames}
        if len(shapes) != 1:
            raise MetadataError(
                f"series {table.text('series_instance_uid', first)} mixes frame shapes {sorted(shapes)}"
            )
        slices = [
            to_channels_first(frame, photometric, syntax)
            for frame, photometric, syntax in zip(
                frames,
                table.strings("photometric_interpretation", rows),
                table.strings("stored_transfer_syntax", rows),
                strict=True,
            )
        ]
        stack = np.stack(slices, axis=1)
        windows = [self.intensity.window_for(float(table.window_center[r]), float(table.window_width[r])) for r in rows]
        image = apply_intensity(
            stack, table.rescale_slope[rows], table.rescale_intercept[rows], windows, self.intensity
        )
        problem = self.irregularities[index]
        affine = volume_affine(table, first, self.fetcher.reduce)
        meta = {
            "index": index,
            "datastore_id": table.text("datastore_id", first),
            "image_set_id": table.text("image_set_id", first),
            "image_set_version": int(table.image_set_version[first]),
            "patient_id": table.text("patient_id", first),
            "study_instance_uid": table.text("study_instance_uid", first),
            "series_instance_uid": table.text("series_instance_uid", first),
            "slices": len(rows),
            "spacing": torch.tensor(spacing_of(affine, 3), dtype=torch.float64),
            "affine": torch.tensor(affine, dtype=torch.float64),
            "space": SPACE,
            "regular": not problem,
            "irregularity": problem,
        }
        item: dict[str, Any] = {"image": image, "meta": meta}
        label = self.label_of_row(first)
        if label is not None:
            item["label"] = label
        return item
