"""Every transform: values, shapes, and geometry that keeps pointing at the same place in the patient."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ahi_torch.errors import ConfigError
from ahi_torch.metadata.geometry import plane_affine
from ahi_torch.sample.synthetic import oblique
from ahi_torch.transforms import (
    Compose,
    CropOrPad,
    CropOrPadDepth,
    Normalize,
    RandomFlip,
    Resize,
    Spacing,
    Window,
    create,
)

SPOT = (9, 21, 40)  # (slice, row, column) of a bright blob in a 16x64x64 volume


def volume_item() -> dict:
    """A (1, 16, 64, 64) volume at [2.5, 0.8, 0.8] mm, oblique, with a smooth blob at SPOT."""
    d, h, w = np.mgrid[0:16, 0:64, 0:64].astype(np.float64)
    spacing = np.array([2.5, 0.8, 0.8])
    distance = ((np.stack([d, h, w], -1) - SPOT) * spacing) ** 2
    image = 1000.0 * np.exp(-distance.sum(-1) / (2 * 4.0**2))
    orientation = oblique(20.0)
    normal = np.cross(orientation[:3], orientation[3:])
    affine = plane_affine(orientation, (0.8, 0.8), (-25.0, -30.0, -100.0), normal * 2.5)
    meta = {"spacing": torch.tensor(spacing), "affine": torch.tensor(affine), "space": "LPS"}
    return {"image": torch.from_numpy(image.astype(np.float32))[None], "meta": meta}


def blob_world(item: dict) -> np.ndarray:
    """Where the blob's intensity-weighted centre is, in patient mm, according to the item's affine."""
    image = item["image"][0].double()
    weights = torch.where(image > image.max() / 20, image, torch.zeros_like(image))
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in image.shape], indexing="ij")
    centre = [float((g * weights).sum() / weights.sum()) for g in grids]
    return (item["meta"]["affine"].numpy() @ np.array([*centre, 1.0]))[:3]


def spacing_from_affine(item: dict) -> np.ndarray:
    spatial = item["image"].ndim - 1
    return np.linalg.norm(item["meta"]["affine"].numpy()[:3, :spatial], axis=0)


TRUTH = blob_world(volume_item())


@pytest.mark.parametrize(
    "transform",
    [
        Resize([64, 128, 128]),
        Resize([8, 40, 24]),
        CropOrPad([12, 48, 70]),
        CropOrPadDepth(10),
        CropOrPadDepth(20),
        RandomFlip(axis=1, p=1.0),
        RandomFlip(axis=-1, p=1.0),
        RandomFlip(axis=-2, p=1.0),
        Spacing([1.0, 1.0, 1.0]),
        Spacing([3.0, 0.5, 1.6]),
        Compose([RandomFlip(axis=2, p=1.0), Resize([20, 50, 60]), CropOrPad([16, 40, 40])]),
    ],
    ids=repr,
)
def test_grid_changes_keep_the_blob_where_it_is_in_the_patient(transform) -> None:  # type: ignore[no-untyped-def]
    out = transform(volume_item())
    # Within a third of a millimetre: the blob's centre is found by weighted average on the new grid.
    np.testing.assert_allclose(blob_world(out), TRUTH, atol=0.35)
    np.testing.assert_allclose(out["meta"]["spacing"].numpy(), spacing_from_affine(out))


def test_resize_updates_spacing_as_the_issue_describes() -> None:
    out = Resize([64, 128, 128])(volume_item())
    assert out["image"].shape == (1, 64, 128, 128)
    np.testing.assert_allclose(out["meta"]["spacing"].numpy(), [0.625, 0.4, 0.4])


def test_spacing_hits_the_target_and_covers_the_extent() -> None:
    out = Spacing([1.0, 1.0, 1.0])(volume_item())
    np.testing.assert_allclose(out["meta"]["spacing"].numpy(), [1.0, 1.0, 1.0], atol=1e-12)
    assert out["image"].shape == (1, 38, 51, 51)  # (n - 1) * old / new + 1, floored
    nearest = Spacing([2.5, 1.6, 1.6], mode="nearest")(volume_item())
    # Nearest-neighbour resampling at double the in-plane step takes every other voxel exactly.
    np.testing.assert_array_equal(nearest["image"].numpy(), volume_item()["image"].numpy()[:, :, ::2, ::2])


def test_crop_or_pad_pads_with_zeros_and_crops_the_centre() -> None:
    item = volume_item()
    original = item["image"].clone()
    out = CropOrPad([20, 60, -1])(item)
    assert out["image"].shape == (1, 20, 60, 64)
    np.testing.assert_array_equal(out["image"][:, 2:18].numpy(), original[:, :, 2:62].numpy())
    assert float(out["image"][:, :2].abs().sum()) == 0.0 and float(out["image"][:, 18:].abs().sum()) == 0.0


def test_flip_reverses_the_axis_and_p_zero_does_nothing() -> None:
    original = volume_item()["image"]
    flipped = RandomFlip(axis=-1, p=1.0)(volume_item())["image"]
    np.testing.assert_array_equal(flipped.numpy(), original.flip(-1).numpy())
    kept = RandomFlip(axis=-1, p=0.0)(volume_item())
    np.testing.assert_array_equal(kept["image"].numpy(), original.numpy())
    with pytest.raises(ConfigError, match="channel"):
        RandomFlip(axis=0, p=1.0)(volume_item())


def test_frames_keep_their_geometry_too() -> None:
    item = volume_item()
    frame = {"image": item["image"][:, SPOT[0]], "meta": dict(item["meta"])}
    frame["meta"]["affine"] = item["meta"]["affine"][:, [1, 2, 0, 3]].clone()
    frame["meta"]["affine"][:3, 3] = torch.from_numpy(item["meta"]["affine"].numpy() @ [SPOT[0], 0, 0, 1])[:3]
    frame["meta"]["spacing"] = torch.tensor([0.8, 0.8], dtype=torch.float64)
    out = Resize([32, 128])(frame)
    assert out["image"].shape == (1, 32, 128)
    np.testing.assert_allclose(out["meta"]["spacing"].numpy(), [1.6, 0.4])
    image = out["image"][0]
    row, column = np.unravel_index(int(image.argmax()), image.shape)
    world = out["meta"]["affine"].numpy() @ np.array([row, column, 0, 1.0])
    np.testing.assert_allclose(world[:3], TRUTH, atol=1.0)


def test_items_without_geometry_pass_through() -> None:
    item = {"image": torch.ones(1, 4, 6)}
    out = Resize([8, 12])(item)
    assert out["image"].shape == (1, 8, 12) and "meta" not in out


def test_intensity_transforms() -> None:
    item = {"image": torch.tensor([[[-200.0, 40.0, 240.0, 1000.0]]])}
    np.testing.assert_allclose(Window(40, 400)(item)["image"].numpy(), [[[0.0, 0.5, 1.0, 1.0]]])
    out = Normalize(mean=10.0, std=4.0)({"image": torch.tensor([[[10.0, 18.0]]])})
    np.testing.assert_allclose(out["image"].numpy(), [[[0.0, 2.0]]])


def test_registry_and_import_paths() -> None:
    assert isinstance(create("spacing", {"spacing": [1, 1]}), Spacing)
    assert isinstance(create("ahi_torch.transforms:Resize", {"size": [4, 4]}), Resize)
    with pytest.raises(ConfigError, match="unknown transform 'resise'"):
        create("resise", {})
    with pytest.raises(ConfigError, match="transform 'resize'"):
        create("resize", {"shape": [4, 4]})
    with pytest.raises(ConfigError, match="does not match 3 spatial dims"):
        Resize([4, 4])(volume_item())


def test_details_mutation_testing_found_untested() -> None:
    """Survivors of `make mutate` (docs/testing.md): integer images, default axis, odd widths, H/W padding, frozen."""
    import dataclasses

    integer = {
        "image": torch.arange(16, dtype=torch.int16).reshape(1, 4, 4),
        "meta": {"spacing": torch.tensor([1.0, 1.0])},
    }
    nearest = Spacing([2.0, 2.0], mode="nearest")(dict(integer))
    assert nearest["image"].dtype == torch.int16 and nearest["image"].tolist() == [[[0, 2], [8, 10]]]
    smooth = Spacing([2.0, 2.0])({"image": integer["image"].clone(), "meta": {"spacing": torch.tensor([1.0, 1.0])}})
    assert smooth["image"].dtype == torch.float32
    flipped = RandomFlip(p=1.0)({"image": torch.arange(6.0).reshape(1, 2, 3)})
    assert flipped["image"].tolist() == [[[2.0, 1.0, 0.0], [5.0, 4.0, 3.0]]], "the default axis is the last one"
    np.testing.assert_allclose(Window(40, 401)({"image": torch.tensor([[[-160.5]]])})["image"].numpy(), [[[0.0]]])
    padded = CropOrPad([4, 6])({"image": torch.ones(1, 2, 2)})["image"][0]
    assert padded[1:3, 2:4].sum() == 4 and padded.sum() == 4, "padding is centred on both axes"
    with pytest.raises(ConfigError, match="does not match 2 spatial dims"):
        CropOrPad([4, 4, 4])({"image": torch.ones(1, 2, 2)})
    with pytest.raises(dataclasses.FrozenInstanceError):
        Resize([4, 4]).size = [2, 2]  # type: ignore[misc]


@pytest.mark.parametrize("transform", [CropOrPad([16, 70, 80]), CropOrPad([18, 60, 72])], ids=repr)
def test_padding_every_axis_keeps_the_blob_in_place(transform) -> None:  # type: ignore[no-untyped-def]
    out = transform(volume_item())
    np.testing.assert_allclose(blob_world(out), TRUTH, atol=0.35)
