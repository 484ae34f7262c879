"""Map-style datasets over a frame index: 2D frames and 3D volumes, labels, error policies.

>>> from torch.utils.data import DataLoader
>>> from ahi_torch.datasets import FrameDataset
>>> loader = DataLoader(FrameDataset(index, FrameFetcher(client, cache=cache)), batch_size=16, num_workers=4)
"""

from ._base import GROUP_COLUMNS, UNLABELED, AHIDataset
from ._convert import Intensity
from .collate import list_collate, pad_collate
from .frames import FrameDataset
from .labels import ColumnLabels, LabelTypes, TableLabels, resolve_labels
from .patches import PatchDataset
from .policy import ErrorPolicy, FailureLog
from .stats import EpochStats
from .volumes import VolumeDataset

__all__ = [
    "GROUP_COLUMNS",
    "UNLABELED",
    "AHIDataset",
    "ColumnLabels",
    "EpochStats",
    "ErrorPolicy",
    "FailureLog",
    "FrameDataset",
    "Intensity",
    "LabelTypes",
    "PatchDataset",
    "TableLabels",
    "VolumeDataset",
    "list_collate",
    "pad_collate",
    "resolve_labels",
]
