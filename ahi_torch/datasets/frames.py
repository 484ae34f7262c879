"""FrameDataset: one item per frame (2D)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..metadata.geometry import SPACE
from ._base import AHIDataset
from ._convert import apply_intensity, to_channels_first
from ._geometry import frame_affines, spacing_of


class FrameDataset(AHIDataset):
    """Every frame of an index as a 2D image, fetched lazily from AHI through the cache.

    >>> frames = FrameFetcher(client, cache=FrameCache())   # how frames are fetched, cached, checked
    >>> dataset = FrameDataset(index, frames, labels="modality", window=(40, 400))
    >>> item = dataset[0]
    >>> item["image"].shape, item["label"], item["meta"]["sop_instance_uid"]
    (torch.Size([1, 512, 512]), tensor(0), '1.2.826...')

    Items are dicts ``{"image": (C, H, W) tensor, "label": tensor, "meta": {...}}`` so MONAI
    dictionary transforms and plain callables both apply. Pixels are rescaled to modality units
    (Hounsfield units for CT) unless ``rescale=False``; ``window=(center, width)`` or
    ``"dicom"`` clips and scales to [0, 1]. ``meta`` carries the IDs, the slice index,
    ``spacing`` (row, column) in mm and ``affine``, which maps pixel ``(row, column, 0, 1)`` to
    millimetres in ``meta["space"]`` (``"LPS"``; its third column is the slice normal times the
    slice spacing).

    Args:
        index: the frames to serve (see :func:`ahi_torch.index.build_index`).
        source: where frames come from: a :class:`~ahi_torch.fetch.FrameFetcher` (client, cache,
            verification, resolution, decoder, threads, retries in one object), or an
            :class:`~ahi_torch.client.AHIClient` for a fetcher with its defaults and no cache.
            The dataset keeps a copy (its own counters and threads; the cache is shared); it
            travels into workers as configuration.
        labels: an index column, :class:`TableLabels`, a ``{series UID: label}`` mapping or a
            callable on index rows; ``unlabeled`` says what to do with frames without one.
        transform: applied to each item dict.
        error_policy: ``"raise"``, ``"skip"``, ``"retry"`` or an :class:`ErrorPolicy`: what happens
            to an item that fails. Its ``retry`` retries only what the fetch layer does not
            (the fetcher's :class:`~ahi_torch.fetch.RetryPolicy`): a frame that failed after its
            own attempts fails the item at once.
        table_dir: where the per-frame columns workers read are written once and memory-mapped
            by every process of the node (:class:`~ahi_torch.index.shared_table.SharedTable`);
            default ``$AHI_TORCH_TABLE_DIR``, else a folder under the system's temporary directory.
    """

    def __len__(self) -> int:
        return len(self.frame_table)

    def _rows(self, index: int) -> np.ndarray:
        return np.array([index], dtype=np.int64)

    def first_rows(self) -> np.ndarray:
        return np.arange(len(self), dtype=np.int64)

    def _build(self, index: int, frames: list[np.ndarray]) -> dict[str, Any]:
        return self._build_batch([index], [frames])[0]

    def _build_batch(self, indices: Sequence[int], frames: Sequence[list[np.ndarray]]) -> list[dict[str, Any]]:
        table, rows = self.frame_table, np.asarray(indices, dtype=np.int64)
        affines = frame_affines(table, rows, self.fetcher.reduce)
        spacings = spacing_of(affines, 2)
        slopes, intercepts = table.rescale_slope[rows], table.rescale_intercept[rows]
        windows = [
            self.intensity.window_for(center, width)
            for center, width in zip(
                np.asarray(table.window_center[rows], dtype=np.float64).tolist(),
                np.asarray(table.window_width[rows], dtype=np.float64).tolist(),
                strict=True,
            )
        ]
        labels = self.labels_of_rows(rows)
        items = []
        for position, (index, meta, photometric, syntax) in enumerate(
            zip(
                indices,
                table.metas(rows),
                table.strings("photometric_interpretation", rows),
                table.strings("stored_transfer_syntax", rows),
                strict=True,
            )
        ):
            chw = to_channels_first(frames[position][0], photometric, syntax)
            span = slice(position, position + 1)
            image = apply_intensity(chw, slopes[span], intercepts[span], [windows[position]], self.intensity)
            meta.update(
                index=index,
                spacing=torch.from_numpy(spacings[position]),
                affine=torch.from_numpy(affines[position]),
                space=SPACE,
            )
            item: dict[str, Any] = {"image": image, "meta": meta}
            if labels is not None:
                item["label"] = labels[position]
            items.append(item)
        return items
