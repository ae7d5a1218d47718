"""Batched augmentations: alignment, determinism, cutout rule, channels and range."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fxbench.config import AugmentConfig
from fxbench.data.augment import Augmenter

SIZE = 64
OFF: dict[str, Any] = {"hflip_prob": 0.0, "vflip_prob": 0.0, "rotate_prob": 0.0}

# Each case switches one augmentation on with probability 1 (strong settings, so it acts).
CASES: dict[str, dict[str, Any]] = {
    "hflip": {"hflip_prob": 1.0},
    "vflip": {"vflip_prob": 1.0},
    "rotate": {"rotate_prob": 1.0, "rotate_degrees": 40.0},
    "affine": {"affine_prob": 1.0, "affine_degrees": 30.0, "affine_translate": 0.15,
               "affine_scale_min": 0.7, "affine_scale_max": 1.3},
    "brightness": {"brightness_prob": 1.0, "brightness": 0.2},
    "contrast": {"contrast_prob": 1.0, "contrast": 0.2},
    "gamma": {"gamma_prob": 1.0},
    "autocontrast": {"autocontrast_prob": 1.0},
    "blur": {"blur_prob": 1.0},
    "sharpen": {"sharpen_prob": 1.0, "sharpen_amount": 1.0},
    "local_contrast": {"local_contrast_prob": 1.0},
    "noise": {"noise_prob": 1.0, "noise_std_min": 0.02},
    "cutout": {"cutout_prob": 1.0, "cutout_frac_min": 0.3, "cutout_frac_max": 0.4},
}  # fmt: skip
GEOMETRIC = {"hflip", "vflip", "rotate", "affine"}


def _augmenter(**knobs: Any) -> Augmenter:
    return Augmenter(AugmentConfig(**{**OFF, **knobs}))


def _markers(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Images at 0.2 with a bright asymmetric L-shaped marker (0.8) off-centre, one per image at a
    different place; the mask is exactly the marker."""
    images = torch.full((n, 1, SIZE, SIZE), 0.2)
    masks = torch.zeros(n, 1, SIZE, SIZE)
    for i in range(n):
        r, c = 10 + 4 * i, 12 + 3 * i
        masks[i, 0, r : r + 14, c : c + 5] = 1.0
        masks[i, 0, r + 9 : r + 14, c : c + 12] = 1.0
    images[masks > 0] = 0.8
    return images, masks


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image IoU ``[N]`` of two boolean ``[N, 1, H, W]`` maps."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return inter / union.clamp_min(1)


@pytest.mark.parametrize("name", list(CASES))
def test_image_and_mask_stay_aligned(name: str) -> None:
    images, masks = _markers()
    out_img, out_mask = _augmenter(**CASES[name])(
        images, masks, torch.ones(6, dtype=torch.bool), torch.Generator().manual_seed(0)
    )
    assert out_img.shape == images.shape and out_mask.shape == masks.shape
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}
    assert out_img.min() >= 0.0 and out_img.max() <= 1.0
    marker = out_img > 0.5
    if name in GEOMETRIC:
        assert not torch.equal(out_mask, masks)  # it moved ...
        assert (_iou(out_mask > 0, masks > 0) < 0.99).all()
        assert (_iou(marker, out_mask > 0) > 0.85).all()  # ... and the image moved with it
    else:
        assert torch.equal(out_mask, masks)
        assert not torch.equal(out_img, images)
        assert (_iou(marker, masks > 0) > 0.85).all()


def test_flips_are_exact() -> None:
    images, masks = torch.rand(3, 1, 32, 48), (torch.rand(3, 1, 32, 48) > 0.7).float()
    gen = torch.Generator().manual_seed(0)
    out_img, out_mask = _augmenter(hflip_prob=1.0)(
        images, masks, torch.zeros(3, dtype=torch.bool), gen
    )
    assert torch.allclose(out_img, images.flip(-1), atol=1e-5)
    assert torch.equal(out_mask, masks.flip(-1))
    out_img, out_mask = _augmenter(hflip_prob=1.0, vflip_prob=1.0)(
        images, masks, torch.zeros(3, dtype=torch.bool), gen
    )
    assert torch.allclose(out_img, images.flip(-1, -2), atol=1e-5)
    assert torch.equal(out_mask, masks.flip(-1, -2))


def test_translation_moves_by_whole_pixels() -> None:
    images = torch.zeros(1, 1, 40, 40)
    images[0, 0, 20, 20] = 1.0
    aug = _augmenter(
        affine_prob=1.0,
        affine_degrees=0.0,
        affine_translate=0.2,
        affine_scale_min=1.0,
        affine_scale_max=1.0,
    )
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        out_img, out_mask = aug(images, images.clone(), torch.ones(1, dtype=torch.bool), gen)
        assert out_img.max().item() == pytest.approx(1.0, abs=1e-5)  # no interpolation blur
        assert out_img.sum().item() == pytest.approx(1.0, abs=1e-5)
        assert torch.equal(out_img > 0.5, out_mask > 0)


def _everything() -> dict[str, Any]:
    knobs: dict[str, Any] = {}
    for case in CASES.values():
        knobs.update(case)
    return knobs


def test_same_seed_same_output_other_seed_differs() -> None:
    images, masks = _markers()
    positive = torch.tensor([True, False] * 3)
    aug = _augmenter(**{k: v * 0.6 if k.endswith("_prob") else v for k, v in _everything().items()})
    a = aug(images, masks, positive, torch.Generator().manual_seed(11))
    b = aug(images, masks, positive, torch.Generator().manual_seed(11))
    c = aug(images, masks, positive, torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_cutout_never_erases_a_fracture_pixel() -> None:
    gen = torch.Generator().manual_seed(0)
    images = torch.ones(16, 1, SIZE, SIZE)
    masks = (torch.rand(16, 1, SIZE // 8, SIZE // 8, generator=gen) > 0.85).float()
    masks = torch.nn.functional.interpolate(masks, size=(SIZE, SIZE), mode="nearest")
    masks[-1] = 1.0  # no room at all: this image must be left alone
    aug = _augmenter(cutout_prob=1.0, cutout_frac_min=0.15, cutout_frac_max=0.25)
    out_img, out_mask = aug(images, masks, torch.ones(16, dtype=torch.bool), gen)
    assert torch.equal(out_mask, masks)
    assert (out_img[masks > 0] == 1.0).all()
    erased = (out_img == 0).flatten(1).any(1)
    assert erased[:-1].sum() >= 12  # most images had room for a box
    assert not erased[-1]


def test_noise_keeps_one_channel_and_grey_identity() -> None:
    aug = _augmenter(noise_prob=1.0, noise_std_min=0.05, noise_std_max=0.1)
    grey = torch.full((2, 1, 16, 16), 0.5)
    out, _ = aug(
        grey,
        torch.zeros(2, 1, 16, 16),
        torch.zeros(2, dtype=torch.bool),
        torch.Generator().manual_seed(0),
    )
    assert out.shape == (2, 1, 16, 16) and out.std() > 0.02
    rgb = grey.repeat(1, 3, 1, 1)
    out3, _ = aug(
        rgb,
        torch.zeros(2, 1, 16, 16),
        torch.zeros(2, dtype=torch.bool),
        torch.Generator().manual_seed(0),
    )
    assert torch.equal(out3[:, 0], out3[:, 1]) and torch.equal(out3[:, 0], out3[:, 2])


def test_values_stay_in_unit_range_under_everything() -> None:
    knobs = _everything() | {
        "brightness": 1.0,
        "contrast": 1.0,
        "sharpen_amount": 3.0,
        "noise_std_max": 0.5,
    }
    images = torch.rand(8, 1, 48, 48)
    out, _ = _augmenter(**knobs)(
        images, torch.zeros_like(images), torch.ones(8, dtype=torch.bool), torch.Generator()
    )
    assert out.min() >= 0.0 and out.max() <= 1.0 and torch.isfinite(out).all()


def test_positive_multiplier_scales_non_flip_probabilities() -> None:
    images = torch.rand(32, 1, 16, 16)
    positive = torch.arange(32) < 16
    aug = _augmenter(brightness_prob=0.25, brightness=0.5, positive_multiplier=4.0)
    out, _ = aug(images, torch.zeros_like(images), positive, torch.Generator().manual_seed(0))
    changed = (out != images).flatten(1).any(1)
    assert changed[:16].all()  # 0.25 * 4 = 1 for fractured images
    assert changed[16:].sum() < 16


def test_disabled_returns_inputs() -> None:
    images, masks = _markers(2)
    aug = Augmenter(AugmentConfig(enabled=False, cutout_prob=1.0))
    out_img, out_mask = aug(images, masks, torch.ones(2, dtype=torch.bool), torch.Generator())
    assert out_img is images and out_mask is masks


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda_with_cuda_generator() -> None:
    images, masks = _markers()
    gen = torch.Generator(device="cuda").manual_seed(0)
    out_img, out_mask = _augmenter(**_everything())(
        images.cuda(), masks.cuda(), torch.ones(6, dtype=torch.bool).cuda(), gen
    )
    assert out_img.is_cuda and out_mask.is_cuda
    assert (out_img[out_mask > 0] > 0.3).float().mean() > 0.9
