"""PatchDataset over synthetic slides in the local AHI: exact patches, grids covering each slide once, tissue."""

from __future__ import annotations

import pickle
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from ahi_torch.datasets import PatchDataset
from ahi_torch.errors import ConfigError, NotASlideWarning, SampleError
from ahi_torch.fetch import FrameFetcher
from ahi_torch.index import FrameIndex, build_index
from ahi_torch.local import LocalAHI
from ahi_torch.sample.slides import SlideSpec, slide_pixels, stored_tiles, write_slide
from ahi_torch.sample.synthetic import SeriesSpec, write_series
from ahi_torch.samplers import WeightedSampler, class_balanced_weights
from ahi_torch.slides.regions import resize
from ahi_torch.slides.tissue import otsu_threshold, saturation, tissue_fractions


def _spec(name: str, **options: object) -> SlideSpec:
    series = SeriesSpec(patient_id=f"PATCH-{name}", study_key=name, series_key=name, modality="SM")
    return SlideSpec(series=series, associated=(), **options)  # type: ignore[arg-type]


SPECS = {"full": _spec("full"), "sparse": _spec("sparse", organization="TILED_SPARSE", width=900, height=650)}


@dataclass(frozen=True)
class Cohort:
    datastore_id: str
    index: FrameIndex
    slide_index: FrameIndex
    series: dict[str, str]  # spec name -> series UID


@pytest.fixture(scope="module")
def cohort(ahi: LocalAHI, tmp_path_factory: pytest.TempPathFactory) -> Cohort:
    root = tmp_path_factory.mktemp("patch-slides")
    for name, spec in SPECS.items():
        write_slide(root / name, spec)
    write_series(root / "ct", SeriesSpec(patient_id="PATCH-CT", slices=2, rows=16, columns=16))
    result = ahi.import_dicom(root)
    assert result.status == "COMPLETED" and not result.failures
    index = build_index(ahi.client(), result.datastore_id, progress=False)
    slide_index = index.filter(index.column("patient_id") != b"PATCH-CT")
    return Cohort(
        result.datastore_id, index, slide_index, {name: spec.series.series_uid for name, spec in SPECS.items()}
    )


def _spec_of(patch: dict) -> SlideSpec:
    return next(spec for spec in SPECS.values() if spec.series.patient_id == patch["meta"]["patient_id"])


def expected_patch(spec: SlideSpec, level: int, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(h, w, 3) of a level as stored (white where a sparse slide stores no tile, and outside it)."""
    source = slide_pixels(spec, level).copy()
    tile_width, tile_height = spec.tile_size
    for row, column in np.argwhere(~stored_tiles(spec, level)):
        source[row * tile_height : (row + 1) * tile_height, column * tile_width : (column + 1) * tile_width] = 255
    left, top = location[0] // 2**level, location[1] // 2**level
    region = np.full((size[1], size[0], 3), 255, dtype=np.uint8)
    x0, y0 = max(left, 0), max(top, 0)
    x1, y1 = min(left + size[0], source.shape[1]), min(top + size[1], source.shape[0])
    if x0 < x1 and y0 < y1:
        region[y0 - top : y1 - top, x0 - left : x1 - left] = source[y0:y1, x0:x1]
    return region


@pytest.mark.parametrize("level", [0, 1])
def test_every_patch_equals_the_source_and_the_grid_covers_each_slide_once(
    ahi: LocalAHI, cohort: Cohort, level: int
) -> None:
    size = (200, 150)
    patches = PatchDataset(cohort.slide_index, ahi.client(), size=size, level=level)
    covered = {name: np.zeros(spec.level_size(0)[::-1], dtype=np.int64) for name, spec in SPECS.items()}
    served = 0
    for batch in DataLoader(patches, batch_size=8, collate_fn=list):  # __getitems__: tiles of 8 patches at once
        for patch in batch:
            spec = _spec_of(patch)
            x, y = patch["meta"]["location"].tolist()
            assert patch["image"].shape == (3, 150, 200) and patch["image"].dtype == torch.uint8
            np.testing.assert_array_equal(
                patch["image"].permute(1, 2, 0).numpy(), expected_patch(spec, level, (x, y), size)
            )
            width, height = patch["meta"]["extent"].tolist()
            assert (width, height) == (200 * 2**level, 150 * 2**level)
            covered[spec.series.series_key][y : y + height, x : x + width] += 1
            served += 1
    assert served == len(patches)
    for name, counts in covered.items():
        assert (counts == 1).all(), f"slide {name}: the grid must cover every pixel exactly once"


def test_mpp_picks_the_level_and_resizes_between_levels(ahi: LocalAHI, cohort: Cohort) -> None:
    spec = SPECS["full"]
    exact = PatchDataset(cohort.slide_index, ahi.client(), size=64, mpp=2 * spec.mpp, locations=None)
    assert {reading.level for reading in exact.readings} == {1} and exact.readings[0].read_size == (64, 64)
    patch = exact[3]
    assert patch["meta"]["mpp"] == pytest.approx(2 * spec.mpp) and patch["meta"]["level"] == 1
    location = tuple(patch["meta"]["location"].tolist())
    np.testing.assert_array_equal(
        patch["image"].permute(1, 2, 0).numpy(), expected_patch(_spec_of(patch), 1, location, (64, 64))
    )

    between = PatchDataset(cohort.slide_index, ahi.client(), size=64, mpp=1.5 * spec.mpp)
    reading = between.readings[0]
    assert reading.level == 0 and reading.read_size == (96, 96)
    patch = between[5]
    location = tuple(patch["meta"]["location"].tolist())
    expected = resize(expected_patch(_spec_of(patch), 0, location, (96, 96)), (64, 64))
    np.testing.assert_array_equal(patch["image"].permute(1, 2, 0).numpy(), expected)
    assert patch["meta"]["extent"].tolist() == [96, 96]

    finer = PatchDataset(cohort.slide_index, ahi.client(), size=64, mpp=spec.mpp / 2)  # finer than level 0
    assert finer.readings[0].level == 0 and finer.readings[0].read_size == (32, 32)
    patch = finer[9]
    location = tuple(patch["meta"]["location"].tolist())
    expected = resize(expected_patch(_spec_of(patch), 0, location, (32, 32)), (64, 64))
    assert patch["image"].shape == (3, 64, 64)
    np.testing.assert_array_equal(patch["image"].permute(1, 2, 0).numpy(), expected)


def test_a_patch_fetches_only_its_covering_tiles(ahi: LocalAHI, cohort: Cohort) -> None:
    full = cohort.slide_index.column("patient_id") == SPECS["full"].series.patient_id.encode()
    image_set_id = cohort.slide_index.column("image_set_id")[full][0].decode()
    locations = [(image_set_id, 10, 10), (image_set_id, 240, 240), (image_set_id, 990, 690), (image_set_id, 2000, 0)]
    patches = PatchDataset(cohort.slide_index, ahi.client(), size=64, level=0, locations=locations)
    expected_tiles = [1, 4, 1, 0]
    for index, tiles in enumerate(expected_tiles):
        before = ahi.request_counts().get("GetImageFrame", 0)
        patch = patches[index]
        assert ahi.request_counts().get("GetImageFrame", 0) - before == tiles
        assert patch["meta"]["location"].tolist() == list(locations[index][1:])
    before = ahi.request_counts().get("GetImageFrame", 0)
    patches.__getitems__([0, 1, 2, 3])
    assert ahi.request_counts().get("GetImageFrame", 0) - before == sum(expected_tiles)


def test_tissue_keeps_the_patches_over_tissue(ahi: LocalAHI, cohort: Cohort) -> None:
    every = PatchDataset(cohort.slide_index, ahi.client(), size=128, level=0)
    tissue = PatchDataset(cohort.slide_index, ahi.client(), size=128, level=0, tissue=0.5)
    assert 0 < len(tissue) < len(every)
    for slide_number in range(len(tissue.slides)):
        spec = next(
            s
            for s in SPECS.values()
            if s.series.patient_id == tissue.frame_table.text("patient_id", int(tissue.slide_first_row[slide_number]))
        )
        truth = saturation(slide_pixels(spec, 0)) > 0.2  # the disc, exactly
        kept = {tuple(xy) for xy in tissue.patch_xy[tissue.patch_slide == slide_number].tolist()}
        grid = every.patch_xy[every.patch_slide == slide_number]
        shares = tissue_fractions(truth, spec.level_size(0), np.concatenate([grid, np.full_like(grid, 128)], axis=1))
        for (x, y), share in zip(grid.tolist(), shares, strict=True):
            if share >= 0.7:
                assert (x, y) in kept, f"a patch {share:.0%} tissue at {(x, y)} was dropped"
            if share <= 0.3:
                assert (x, y) not in kept, f"a patch {share:.0%} tissue at {(x, y)} was kept"


@settings(max_examples=50, deadline=None)
@given(
    low=st.floats(0.0, 0.3),
    high=st.floats(0.6, 1.0),
    counts=st.tuples(st.integers(50, 2000), st.integers(50, 2000)),
    seed=st.integers(0, 2**16),
)
def test_otsu_separates_two_clusters(low: float, high: float, counts: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.normal(low, 0.03, counts[0]), rng.normal(high, 0.03, counts[1])]).clip(0, 1)
    threshold = otsu_threshold(values)
    assert low + 0.03 < threshold < high - 0.03 or (
        (values[: counts[0]] <= threshold).all() and (values[counts[0] :] > threshold).all()
    )
    assert otsu_threshold(np.full(100, 0.4)) == pytest.approx(0.4)


def test_labels_per_slide_and_balanced_sampling(ahi: LocalAHI, cohort: Cohort) -> None:
    labels = {cohort.series["full"]: "tumour", cohort.series["sparse"]: "normal"}
    patches = PatchDataset(cohort.slide_index, ahi.client(), size=100, level=0, labels=labels)
    assert patches.classes == ["normal", "tumour"]
    for index in (0, len(patches) - 1):
        patch = patches[index]
        expected = "tumour" if patch["meta"]["series_instance_uid"] == cohort.series["full"] else "normal"
        assert patches.classes[int(patch["label"])] == expected
    per_slide = Counter(patches.patch_slide.tolist())
    assert per_slide[0] != per_slide[1], "the slides have different patch counts"
    sampler = WeightedSampler(class_balanced_weights(patches.group_keys("image_set_id")), num_samples=4000, seed=3)
    drawn = Counter(patches.patch_slide[list(sampler)].tolist())
    assert abs(drawn[0] - drawn[1]) < 400, f"balanced per slide: {drawn}"


def test_non_slides_are_left_out_loudly_and_bad_options_fail(ahi: LocalAHI, cohort: Cohort) -> None:
    with pytest.warns(NotASlideWarning, match="1 of 3 image sets hold no whole-slide image"):
        mixed = PatchDataset(cohort.index, ahi.client(), size=256, level=0)
    assert len(mixed.slides) == 2
    only_ct = cohort.index.filter(cohort.index.column("patient_id") == b"PATCH-CT")
    with pytest.raises(ConfigError, match="none of the index's 1 image sets holds a whole-slide image"):
        PatchDataset(only_ct, ahi.client(), size=256, level=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for options, message in (
            ({"level": 0, "mpp": 0.5}, "either a level or an mpp"),
            ({}, "either a level or an mpp"),
            ({"level": 5}, "level 5 is not one of the 3 levels"),
            ({"level": 0, "size": 0}, "size must be a positive number"),
            ({"level": 0, "tissue": 1.5}, r"tissue is a share of the patch in \[0, 1\]"),
            ({"level": 0, "locations": [("f" * 32, 0, 0)]}, "holds no slide of this dataset"),
        ):
            with pytest.raises(ConfigError, match=message):
                PatchDataset(cohort.slide_index, ahi.client(), **options)  # type: ignore[arg-type]


def test_a_damaged_tile_goes_through_the_error_policy(ahi: LocalAHI, cohort: Cohort) -> None:
    strict = PatchDataset(cohort.slide_index, ahi.client(), size=64, level=0, error_policy="raise")
    skipping = PatchDataset(cohort.slide_index, ahi.client(), size=64, level=0, error_policy="skip")
    row = int(strict._rows(0)[0])
    path = ahi.store.frame_path(strict.frame_table.text("frame_id", row))
    saved = path.read_bytes()
    damaged = bytearray(saved)
    damaged[len(damaged) - 40] ^= 0x5A
    try:
        path.write_bytes(bytes(damaged))
        # One byte flipped: the tile fails AHI's CRC32, or fails to decode at all, as damage falls.
        with pytest.raises(SampleError, match=r"sample 0 \(image set .* frame .*\) failed"):
            strict[0]
        replaced = skipping[0]
        assert replaced["meta"]["index"] != 0 and skipping.failures.records[0].index == 0
    finally:
        path.write_bytes(saved)


@pytest.mark.parametrize("context", ["spawn"])
def test_workers_serve_the_same_patches(ahi: LocalAHI, cohort: Cohort, context: str) -> None:
    patches = PatchDataset(cohort.slide_index, FrameFetcher(ahi.client()), size=128, level=1)
    assert pickle.loads(pickle.dumps(patches)).slides == [], "workers get arrays, not a string per tile"
    loader = DataLoader(patches, batch_size=4, num_workers=2, multiprocessing_context=context)
    images = torch.cat([batch["image"] for batch in loader])
    assert torch.equal(images, torch.stack([patches[index]["image"] for index in range(len(patches))]))
    patches.stats.reset()
    list(loader)
    summary = patches.stats.summary()
    assert summary["items_served"] == len(patches) and summary["requests"] > 0


def test_a_config_with_view_patches_builds_a_balanced_patch_loader(
    ahi: LocalAHI, cohort: Cohort, tmp_path: Path
) -> None:
    from ahi_torch import config
    from ahi_torch.config.schema import Config

    cfg = config.from_dict(
        Config,
        {
            "connection": {"endpoint_url": ahi.endpoint_url},
            "datastore": {"id": cohort.datastore_id},
            "index": {"path": str(tmp_path / "index.parquet")},
            "search": {"modalities": ["SM"]},
            "view": "patches",
            "patches": {"size": 100, "mpp": 0.5, "tissue": 0.25},
            "labels": {"column": "patient_id"},
            "cache": {"dir": str(tmp_path / "cache")},
            "loader": {"sampler": "class_balanced", "batch_size": 6, "num_workers": 0},
        },
    )
    dataset = config.build_dataset(cfg, progress=False)
    assert isinstance(dataset, PatchDataset) and len(dataset.slides) == 2
    assert {reading.level for reading in dataset.readings} == {1} and dataset.classes == ["PATCH-full", "PATCH-sparse"]
    loader = config.build_dataloader(cfg, dataset)
    drawn = Counter(int(label) for batch in loader for label in batch["label"])
    assert sum(drawn.values()) == len(dataset) and min(drawn.values()) > len(dataset) / 4, drawn


def test_cache_warm_fetches_each_tile_of_a_patch_config_once(
    ahi: LocalAHI, cohort: Cohort, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ahi_torch.cli.main import main

    config = tmp_path / "patches.yaml"
    config.write_text(
        f"connection: {{endpoint_url: '{ahi.endpoint_url}'}}\n"
        f"datastore: {{id: '{cohort.datastore_id}'}}\n"
        f"index: {{path: '{tmp_path / 'index.parquet'}'}}\n"
        "search: {modalities: [SM]}\n"
        "view: patches\n"
        "patches: {size: 200, level: 0, stride: 100}\n"  # overlapping: most tiles lie under several patches
        f"cache: {{dir: '{tmp_path / 'cache'}'}}\n"
    )
    tiles = sum(int(stored_tiles(spec, 0).sum()) for spec in SPECS.values())
    assert main(["cache", "warm", str(config)]) == 0
    assert f"{tiles} frames: 0 already cached, {tiles} fetched" in capsys.readouterr().out
    assert main(["cache", "warm", str(config)]) == 0
    assert f"{tiles} frames: {tiles} already cached, 0 fetched" in capsys.readouterr().out
