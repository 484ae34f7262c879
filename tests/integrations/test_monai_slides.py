"""MONAI's own whole-slide datasets over AHI: AHIWSIReader serves PatchWSIDataset the patches PatchDataset serves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ahi_torch.cache import FrameCache
from ahi_torch.datasets import PatchDataset
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI
from ahi_torch.sample.slides import SlideSpec, slide_pixels, write_slide
from ahi_torch.sample.synthetic import SeriesSpec

monai = pytest.importorskip("monai")
from monai.data import PatchWSIDataset  # noqa: E402

from ahi_torch.integrations.monai import AHIWSIReader, references  # noqa: E402

SPECS = [
    SlideSpec(
        series=SeriesSpec(patient_id=f"MONAI-SLIDE-{n}", study_key=f"m{n}", series_key=f"m{n}", modality="SM"),
        width=700 + 100 * n,
        height=500,
        associated=(),
    )
    for n in range(2)
]


@pytest.fixture(scope="module")
def slide_index(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> FrameIndex:
    root = tmp_path_factory.mktemp("monai-slides")
    for number, spec in enumerate(SPECS):
        write_slide(root / str(number), spec)
    result = ahi.import_dicom(root)
    assert result.status == "COMPLETED" and not result.failures
    return build_index(ahi.client(), result.datastore_id, progress=False)


def test_patch_wsi_dataset_reads_what_patch_dataset_serves(
    ahi: LocalAHI, slide_index: FrameIndex, tmp_path: Path
) -> None:
    fetcher = FrameFetcher(ahi.client(), cache=FrameCache(tmp_path / "cache"))
    patches = PatchDataset(slide_index, fetcher, size=(160, 96), level=1, labels="patient_id")
    data = references(patches)
    assert len(data) == len(patches) and data[0]["image"].startswith("ahi://") and data[0]["level"] == 1
    reader = AHIWSIReader(fetcher)
    monai_patches = PatchWSIDataset(data, patch_size=None, center_location=False, reader=reader)
    for index in (0, 7, len(patches) - 1):
        ours, theirs = patches[index], monai_patches[index]
        assert torch.equal(torch.as_tensor(theirs["image"]), ours["image"]), f"patch {index}"
        assert int(theirs["label"]) == int(ours["label"])
        location = theirs["image"].meta["location"]
        assert list(np.asarray(location)) == ours["meta"]["location"].tolist()[::-1]  # MONAI's (y, x)


def test_the_reader_answers_as_monai_readers_do(ahi: LocalAHI, slide_index: FrameIndex) -> None:
    reader = AHIWSIReader(ahi.client(), mode="RGBA")
    patches = PatchDataset(slide_index, ahi.client(), size=64, level=0)
    slide = reader.read(patches.slides[0].uri)
    spec = next(s for s in SPECS if s.level_size(0) == slide.dimensions)
    assert reader.get_size(slide, 1) == spec.level_size(1)[::-1] and reader.get_level_count(slide) == 3
    assert reader.get_mpp(slide, 1) == pytest.approx((0.5, 0.5)) and reader.get_downsample_ratio(slide, 2) == 4.0
    image, meta = reader.get_data(slide, location=(100, 200), size=(30, 40), level=0)
    assert image.shape == (4, 30, 40) and (image[3] == 255).all()
    np.testing.assert_array_equal(np.moveaxis(image[:3], 0, -1), slide_pixels(spec, 0)[100:130, 200:240])
    assert meta["path"] == slide.uri and list(meta["location"]) == [100, 200]
    by_mpp, _ = reader.get_data(slide, location=(0, 0), size=(8, 8), mpp=1.0)  # level 2's spacing
    np.testing.assert_array_equal(np.moveaxis(by_mpp[:3], 0, -1), slide_pixels(spec, 2)[:8, :8])
    with pytest.raises(ValueError, match="objective power"):
        reader.get_data(slide, size=(8, 8), power=20)
