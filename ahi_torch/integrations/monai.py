"""MONAI: AHI volumes as ``MetaTensor`` objects in MONAI's own convention.

MONAI's readers give ``(C, x, y, z)`` tensors, x the column, y the row and z the slice, with a
**RAS** affine. ahi_torch items are ``(C, D, H, W)`` with an LPS affine over (slice, row, column).
:func:`to_metatensor` turns one into the other (reverse the spatial axes, flip x and y), so
``Orientationd``, ``Spacingd`` and the rest agree exactly with what they do after
``LoadImaged(reader="PydicomReader")`` on the same DICOM files.

>>> from monai.data import PersistentDataset
>>> from monai.transforms import Compose, Orientationd, Spacingd
>>> from ahi_torch.integrations.monai import LoadAHId, references
>>> data = references(index, label="patient_id")     # [{"image": "ahi://...?version=1", ...}]
>>> transform = Compose([
...     LoadAHId("image", index=index, source=FrameFetcher(client, cache=FrameCache())),
...     Orientationd("image", axcodes="RAS"),
...     Spacingd("image", pixdim=(1.0, 1.0, 2.0)),
... ])
>>> dataset = PersistentDataset(data, transform, cache_dir="runs/monai-cache")

The data items stay small ``ahi://`` references: ``PersistentDataset`` hashes a URI, never
pixels, and ``CacheDataset`` copies a URI. ``LoadAHId`` fetches the frames through the ahi_torch
frame cache (shared by all workers), and the URI names the image set version, so a persistent
cache never serves pixels of an older version.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.wsi_reader import BaseWSIReader
from monai.transforms import MapTransform
from monai.utils import WSIPatchKeys, ensure_tuple

from ..client import AHIClient
from ..datasets import ErrorPolicy, PatchDataset, VolumeDataset
from ..errors import ConfigError
from ..fetch import FrameFetcher
from ..index import FrameIndex
from ..index.references import SeriesReference, parse_series_uri, series_uri
from ..metadata.geometry import SPACE
from ..slides import Slide, open_slide

#: LPS (DICOM) to RAS (MONAI, NIfTI): x and y change sign.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _uri_of(meta: Mapping[str, Any]) -> str | None:
    needed = ("datastore_id", "image_set_id", "series_instance_uid", "image_set_version")
    if all(meta.get(name) is not None for name in needed):
        return series_uri(
            str(meta["datastore_id"]),
            str(meta["image_set_id"]),
            str(meta["series_instance_uid"]),
            int(meta["image_set_version"]),
        )
    return meta.get("filename_or_obj")


def to_metatensor(item: Mapping[str, Any], key: str = "image") -> MetaTensor:
    """A ``FrameDataset``/``VolumeDataset`` item's image as a MONAI ``MetaTensor``.

    Volumes ``(C, D, H, W)`` become ``(C, W, H, D)`` (column, row, slice) and frames ``(C, H, W)``
    become ``(C, W, H)``; the affine follows the axes and turns from LPS into RAS. The meta dict
    carries ``affine``, ``original_affine``, ``spatial_shape``, ``space`` (``"RAS"``),
    ``filename_or_obj`` (an ``ahi://`` URI for volumes) and the item's identifiers.

    >>> image = to_metatensor(volumes[0])
    >>> image.shape, image.meta["space"]
    (torch.Size([1, 512, 512, 64]), 'RAS')
    """
    image = item[key]
    meta = dict(item.get("meta") or {})
    if meta.get("affine") is None:
        raise ConfigError("to_metatensor: the item has no meta['affine'] (give an ahi_torch dataset item)")
    if meta.get("space", SPACE) != SPACE:
        raise ConfigError(f"to_metatensor: expected an {SPACE} affine, got {meta['space']!r}")
    spatial = image.ndim - 1
    if spatial not in (2, 3):
        raise ConfigError(f"to_metatensor: expected 2 or 3 spatial dims, got {spatial}")
    affine = np.asarray(meta.pop("affine"), dtype=np.float64)
    # Reverse the spatial axes: (slice, row, column) -> (column, row, slice); a frame's third
    # affine column (the slice normal) stays third.
    axes = (0, *range(spatial, 0, -1))
    columns = [2, 1, 0, 3] if spatial == 3 else [1, 0, 2, 3]
    ras = torch.as_tensor(LPS_TO_RAS @ affine[:, columns], dtype=torch.float64)
    array = image.permute(*axes)
    uri = _uri_of(meta)
    if spatial == 2 and uri and meta.get("frame_id"):
        uri += f"&frame={meta['frame_id']}"
    meta.pop("spacing", None)  # MONAI derives spacing from the affine (pixdim); the order differs
    meta.update(
        {
            "affine": ras,
            "original_affine": ras.clone(),
            "spatial_shape": np.asarray(array.shape[1:], dtype=np.int64),
            "space": "RAS",
            "original_channel_dim": 0,
            "filename_or_obj": uri,
        }
    )
    return MetaTensor(array, meta=meta)  # the affine travels in meta (passing both makes MONAI warn)


class LoadAHId(MapTransform):
    """MONAI ``MapTransform``: replace ``ahi://`` references with ``MetaTensor`` volumes.

    Args:
        keys: the data keys holding references (usually ``"image"``).
        index: the :class:`~ahi_torch.index.FrameIndex` the references come from.
        source: where frames come from, as for :class:`~ahi_torch.datasets.VolumeDataset`: a
            :class:`~ahi_torch.fetch.FrameFetcher` (its cache is shared by every worker;
            ``reduce=1`` loads half-size volumes, their affine and spacing kept true) or an
            :class:`~ahi_torch.client.AHIClient` for the defaults without a cache.
        rescale, window, dtype, irregular, error_policy: as for
            :class:`~ahi_torch.datasets.VolumeDataset`. ``error_policy="skip"`` is refused: a
            replacement volume would not match the item's other keys (its label).
        allow_missing_keys: as for every MONAI ``MapTransform``.

    A reference to another image set version than the index holds fails with a
    :class:`~ahi_torch.errors.ConfigError` (refresh the index and the references together).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        *,
        index: FrameIndex,
        source: AHIClient | FrameFetcher,
        rescale: bool = True,
        window: tuple[float, float] | str | None = None,
        dtype: torch.dtype = torch.float32,
        irregular: str = "warn",
        error_policy: ErrorPolicy | str = "raise",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if ErrorPolicy.of(error_policy).mode == "skip":
            raise ConfigError(
                "LoadAHId: error_policy 'skip' would pair a label with another volume; use raise or retry"
            )
        self.volumes = VolumeDataset(
            index,
            source,
            rescale=rescale,
            window=window,
            dtype=dtype,
            irregular=irregular,
            error_policy=error_policy,
        )
        table = self.volumes.frame_table
        self._positions: dict[tuple[str, str], tuple[int, int]] = {}
        for position, rows in enumerate(self.volumes.volume_rows):
            first = int(rows[0])
            key = (table.text("image_set_id", first), table.text("series_instance_uid", first))
            self._positions[key] = (position, int(table.image_set_version[first]))

    def position_of(self, reference: SeriesReference) -> int:
        """The volume number a reference names in this transform's index."""
        found = self._positions.get((reference.image_set_id, reference.series_instance_uid))
        if found is None:
            raise ConfigError(f"{reference.uri} is not in the index this LoadAHId was built with")
        position, version = found
        if version != reference.version:
            raise ConfigError(
                f"{reference.uri} names version {reference.version}, the index holds version {version}: "
                "rebuild the references from the refreshed index"
            )
        return position

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        result = dict(data)
        for key in self.key_iterator(result):
            reference = parse_series_uri(result[key])
            result[key] = to_metatensor(self.volumes[self.position_of(reference)])
        return result


def references(
    data: FrameIndex | VolumeDataset | PatchDataset, label: str | None = None, columns: Sequence[str] = ("patient_id",)
) -> list[dict[str, Any]]:
    """One small dict per volume for MONAI datasets: ``{"image": "ahi://...?version=N", "label": ..., ...}``.

    The ``ahi://`` URI names the image set version, so MONAI's ``PersistentDataset`` hashes a few
    bytes instead of pixels and never serves an older version; :class:`LoadAHId` turns it into a
    ``MetaTensor``. ``columns`` copy index columns (from each volume's first frame) into the dicts.
    From an index, ``label`` names the column that becomes ``"label"``; a
    :class:`~ahi_torch.datasets.VolumeDataset` brings its own labels (a column, a table, a
    callable), so MONAI pipelines train on the same labels as the ahi_torch dataset.

    >>> references(index, label="modality")[0]
    {'image': 'ahi://.../1.2.826...?version=1', 'label': 'CT', 'patient_id': 'SYN-0001'}

    From a :class:`~ahi_torch.datasets.PatchDataset`, one dict per patch in the layout of MONAI's
    ``PatchWSIDataset`` (``location`` is the top-left corner as ``[y, x]`` in level-0 pixels: pass
    ``center_location=False``; ``size`` and ``level`` are what is read, before any resize to an
    ``mpp``), to read with :class:`AHIWSIReader`.
    """
    if isinstance(data, PatchDataset):
        if label is not None:
            raise ConfigError("a PatchDataset brings its own labels: leave label out")
        return _patch_references(data, columns)
    if isinstance(data, VolumeDataset):
        if label is not None:
            raise ConfigError("a VolumeDataset brings its own labels: leave label out")
        return _dataset_references(data, columns)
    return _index_references(data, label, columns)


def _entry(uri: str, label: Any, extras: dict[str, Any]) -> dict[str, Any]:
    return {"image": uri, **({"label": label} if label is not None else {}), **extras}


def _index_references(index: FrameIndex, label: str | None, columns: Sequence[str]) -> list[dict[str, Any]]:
    wanted = ([label] if label else []) + [c for c in columns if c != label]
    missing = [name for name in wanted if name not in index.table.column_names]
    if missing:
        raise ConfigError(f"the index has no column {missing[0]!r}")
    firsts = [int(volume.rows[0]) for volume in index.volumes()]
    keys = ["datastore_id", "image_set_id", "series_instance_uid", "image_set_version", *wanted]
    rows = index.table.take(pa.array(firsts, type=pa.int64())).select(keys).to_pylist()
    return [
        _entry(
            series_uri(row["datastore_id"], row["image_set_id"], row["series_instance_uid"], row["image_set_version"]),
            row[label] if label else None,
            {name: row[name] for name in wanted if name != label},
        )
        for row in rows
    ]


def _dataset_references(dataset: VolumeDataset, columns: Sequence[str]) -> list[dict[str, Any]]:
    table = dataset.frame_table
    data = []
    for rows in dataset.volume_rows:
        first = int(rows[0])
        uri = series_uri(
            table.text("datastore_id", first),
            table.text("image_set_id", first),
            table.text("series_instance_uid", first),
            int(table.image_set_version[first]),
        )
        label = dataset.label_of_row(first)
        extras = {name: table.text(name, first) for name in columns}
        data.append(_entry(uri, label.item() if label is not None else None, extras))
    return data


def _patch_references(dataset: PatchDataset, columns: Sequence[str]) -> list[dict[str, Any]]:
    table, data = dataset.frame_table, []
    for index in range(len(dataset)):
        slide_number = int(dataset.patch_slide[index])
        slide, reading = dataset.slides[slide_number], dataset.readings[slide_number]
        first = int(dataset.slide_first_row[slide_number])
        x, y = (int(v) for v in dataset.patch_xy[index])
        label = dataset.label_of_row(first)
        extras = {  # MONAI's keys (WSIPatchKeys), its (y, x) order
            WSIPatchKeys.LOCATION.value: [y, x],
            WSIPatchKeys.SIZE.value: [reading.read_size[1], reading.read_size[0]],
            WSIPatchKeys.LEVEL.value: reading.level,
            **{name: table.text(name, first) for name in columns},
        }
        data.append(_entry(slide.uri, label.item() if label is not None else None, extras))
    return data


class AHIWSIReader(BaseWSIReader):
    """MONAI's whole-slide reader interface over AHI slides, named by ``ahi://`` series references.

    MONAI's ``PatchWSIDataset``, ``SlidingPatchWSIDataset`` and ``MaskedPatchWSIDataset`` take it
    as their ``reader``; tiles come through the given fetcher (its frame cache, its checks):

    >>> from monai.data import PatchWSIDataset
    >>> reader = AHIWSIReader(FrameFetcher(client, cache=FrameCache()))
    >>> dataset = PatchWSIDataset(references(patches), patch_size=None, center_location=False, reader=reader)

    Args:
        source: a :class:`~ahi_torch.fetch.FrameFetcher` or an :class:`~ahi_torch.client.AHIClient`.
        kwargs: MONAI's ``BaseWSIReader`` options (``level``, ``mpp``, ``channel_dim``, ``dtype``, ``mode``...).
    """

    backend = "ahi"
    supported_suffixes: list[str] = []

    def __init__(self, source: AHIClient | FrameFetcher, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source

    def verify_suffix(self, filename: Any) -> bool:
        return all(str(name).startswith("ahi://") for name in ensure_tuple(filename))

    def read(self, data: Any, **kwargs: Any) -> Slide | list[Slide]:
        """The slide each ``ahi://`` reference names, at the version it names."""
        slides = []
        for uri in ensure_tuple(data):
            reference = parse_series_uri(str(uri))
            slides.append(
                open_slide(
                    self.source,
                    reference.datastore_id,
                    reference.image_set_id,
                    series_instance_uid=reference.series_instance_uid,
                    version=reference.version,
                )
            )
        return slides if len(slides) > 1 else slides[0]

    def get_size(self, wsi: Slide, level: int) -> tuple[int, int]:
        """(height, width) of ``level``, as MONAI's readers give it."""
        width, height = wsi.level_dimensions[level]
        return height, width

    def get_level_count(self, wsi: Slide) -> int:
        return wsi.level_count

    def get_downsample_ratio(self, wsi: Slide, level: int) -> float:
        return wsi.level_downsamples[level]

    def get_file_path(self, wsi: Slide) -> str:
        return wsi.uri

    def get_mpp(self, wsi: Slide, level: int) -> tuple[float, float]:
        """(y, x) µm per pixel at ``level``, as MONAI's readers give it."""
        spacing = wsi.pyramid.levels[level].mpp
        if spacing is None:
            raise ValueError(f"slide {wsi.uri} gives no pixel spacing: use level instead of mpp")
        return spacing[1], spacing[0]

    def get_power(self, wsi: Slide, level: int) -> float:
        raise ValueError("AHI slides carry no objective power here: use level or mpp instead")

    def _get_patch(
        self, wsi: Slide, location: tuple[int, int], size: tuple[int, int], level: int, dtype: Any, mode: str
    ) -> np.ndarray:
        """``location`` (top, left) in level-0 pixels and ``size`` (height, width), MONAI's order."""
        patch = wsi.read_region((int(location[1]), int(location[0])), level, (int(size[1]), int(size[0])))
        if mode == "RGBA":
            patch = np.concatenate([patch, np.full((*patch.shape[:2], 1), 255, dtype=np.uint8)], axis=-1)
        return np.moveaxis(patch.astype(dtype, copy=False), -1, self.channel_dim)
