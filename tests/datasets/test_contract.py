"""The contract every ahi_torch dataset keeps (as torchvision's DatasetTestCase checks its datasets).

Length, item structure and types, labels, transforms, batched ``__getitems__`` equal to single
items, bounds, pickling into workers, and a DataLoader with worker processes, for each class.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from ahi_torch.cache import FrameCache
from ahi_torch.datasets import AHIDataset, FrameDataset, VolumeDataset
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI
from ahi_torch.sample.synthetic import demo_cohort

#: (class, spatial dims of an item's image, meta keys every item carries)
CLASSES = [
    (FrameDataset, 2, {"image_set_id", "series_instance_uid", "sop_instance_uid", "frame_id", "slice_index"}),
    (VolumeDataset, 3, {"image_set_id", "series_instance_uid", "slices", "regular", "irregularity"}),
]
COMMON_META = {"index", "affine", "spacing", "space", "datastore_id", "patient_id", "study_instance_uid"}


@pytest.fixture(scope="module")
def contract_index(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> FrameIndex:
    root = tmp_path_factory.mktemp("contract")
    demo_cohort(root, patients=3, slices=4, size=20)
    result = ahi.import_dicom(root)
    return build_index(ahi.client(), result.datastore_id, progress=False)


def _marked(item: dict[str, Any]) -> dict[str, Any]:
    return {**item, "transformed": True}


@pytest.mark.parametrize(("kind", "dims", "meta_keys"), CLASSES, ids=[c[0].__name__ for c in CLASSES])
def test_dataset_contract(
    ahi: LocalAHI, contract_index: FrameIndex, tmp_path: Path, kind: type[AHIDataset], dims: int, meta_keys: set[str]
) -> None:
    dataset = kind(
        contract_index, FrameFetcher(ahi.client(), cache=FrameCache(tmp_path)), labels="patient_id", transform=_marked
    )
    expected_length = len(contract_index) if kind is FrameDataset else contract_index.image_set_count
    assert len(dataset) == expected_length > 0
    item = dataset[0]
    assert item["transformed"] is True, "the transform sees every item"
    image = item["image"]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and image.ndim == dims + 1
    assert image.shape[0] == 1, "channels first"
    meta = item["meta"]
    assert COMMON_META | meta_keys <= set(meta), set(meta) ^ (COMMON_META | meta_keys)
    assert meta["index"] == 0 and meta["space"] == "LPS"
    assert meta["affine"].shape == (4, 4) and meta["affine"].dtype == torch.float64
    assert meta["spacing"].shape == (dims,) and bool((meta["spacing"] > 0).all())
    assert isinstance(item["label"], torch.Tensor) and item["label"].dtype == torch.long
    assert dataset.classes is not None and len(dataset.classes) == 3

    batch = dataset.__getitems__([1, 0])
    assert [b["meta"]["index"] for b in batch] == [1, 0]
    torch.testing.assert_close(batch[1]["image"], image)
    with pytest.raises(IndexError):
        dataset[len(dataset)]
    with pytest.raises(IndexError):
        dataset[-1]

    clone = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(clone[0]["image"], image)
    assert clone[0]["label"] == item["label"]

    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=list)
    seen = sorted(int(i["meta"]["index"]) for batch in loader for i in batch)
    assert seen == list(range(len(dataset))), "every item exactly once through worker processes"
