"""VolumeDataset: one item per series (3D), slices in geometric order."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import MetadataError
from ..index import FrameIndex
from ._base import AHIDataset
from ._convert import apply_intensity, to_channels_first


class VolumeDataset(AHIDataset):
    """Every series of an index as a volume ``(C, D, H, W)``, its frames fetched concurrently.

    >>> volumes = VolumeDataset(index, client, cache=FrameCache(), window=(40, 400))
    >>> item = volumes[0]
    >>> item["image"].shape, item["meta"]["spacing"], item["meta"]["affine"].shape
    (torch.Size([1, 64, 512, 512]), tensor([2.5, 0.7, 0.7]), torch.Size([4, 4]))

    Slices follow ImagePositionPatient along the slice normal (InstanceNumber as fallback), as
    the index orders them. ``meta["spacing"]`` is (slice, row, column) in mm, matching (D, H, W);
    ``meta["affine"]`` maps voxel (column, row, slice, 1) to LPS millimetres. Fixed-depth crops
    and resampling are left to transforms (MONAI's ``ResizeWithPadOrCropd``, ``Spacingd``...).
    Takes the same arguments as :class:`FrameDataset`; a volume's label is its first frame's.
    """

    def __init__(self, index: FrameIndex, *args: Any, **kwargs: Any) -> None:
        super().__init__(index, *args, **kwargs)
        self.volume_rows = [volume.rows for volume in self.index.volumes()]

    def __len__(self) -> int:
        return len(self.volume_rows)

    def _rows(self, unit: int) -> np.ndarray:
        return self.volume_rows[unit]

    def _build(self, unit: int, frames: list[np.ndarray]) -> dict[str, Any]:
        table = self.table
        rows = self.volume_rows[unit]
        first = int(rows[0])
        shapes = {frame.shape for frame in frames}
        if len(shapes) != 1:
            raise MetadataError(
                f"series {table.text('series_instance_uid', first)} mixes frame shapes {sorted(shapes)}"
            )
        slices = [
            to_channels_first(f, table.photometric(int(r)), table.syntax(int(r)))
            for f, r in zip(frames, rows, strict=True)
        ]
        stack = np.stack(slices, axis=1)
        windows = [self.intensity.window_for(float(table.window_center[r]), float(table.window_width[r])) for r in rows]
        image = apply_intensity(
            stack, table.rescale_slope[rows], table.rescale_intercept[rows], windows, self.intensity
        )
        spacing = [table.slice_spacing[first], table.pixel_spacing_row[first], table.pixel_spacing_col[first]]
        spacing = [s if np.isfinite(s) else 1.0 for s in spacing]
        affine = table.series_affine[first].reshape(4, 4)
        if not np.isfinite(affine).all():
            affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        meta = {
            "index": unit,
            "image_set_id": table.text("image_set_id", first),
            "image_set_version": int(table.image_set_version[first]),
            "patient_id": table.text("patient_id", first),
            "study_instance_uid": table.text("study_instance_uid", first),
            "series_instance_uid": table.text("series_instance_uid", first),
            "slices": len(rows),
            "spacing": torch.tensor(spacing, dtype=torch.float64),
            "affine": torch.tensor(affine, dtype=torch.float64),
        }
        item: dict[str, Any] = {"image": image, "meta": meta}
        label = self.label_of_row(first)
        if label is not None:
            item["label"] = label
        return item
