"""Balanced sampler, DDP sharding and patch cropping at the network scale."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fxbench.config import PatchConfig
from fxbench.train.samplers import (
    BalancedSampler,
    crop_patches,
    hard_negative_candidates,
    row_quantile,
    shard,
)

LABELS = np.array([1] * 10 + [0] * 90)


@pytest.mark.parametrize("fraction", [0.5, 0.3])
def test_positive_ratio_within_tolerance(fraction: float) -> None:
    sampler = BalancedSampler(LABELS, positive_fraction=fraction, epoch_size=20000, seed=1)
    idx = sampler.epoch_indices(1)
    assert idx.dtype == np.int64 and idx.shape == (20000,)
    assert abs(LABELS[idx].mean() - fraction) < 0.015
    # With replacement: all 10 positives show up many times.
    assert set(idx[LABELS[idx] == 1].tolist()) == set(range(10))


def test_default_epoch_size_is_split_size() -> None:
    assert len(BalancedSampler(LABELS).epoch_indices(1)) == 100


def test_deterministic_in_seed_and_epoch() -> None:
    a = BalancedSampler(LABELS, seed=7)
    b = BalancedSampler(LABELS, seed=7)
    assert np.array_equal(a.epoch_indices(3), b.epoch_indices(3))
    assert np.array_equal(a.epoch_indices(3), a.epoch_indices(3))  # no hidden state advances
    assert not np.array_equal(a.epoch_indices(3), a.epoch_indices(4))
    assert not np.array_equal(a.epoch_indices(3), BalancedSampler(LABELS, seed=8).epoch_indices(3))


def test_unbalanced_is_a_permutation() -> None:
    sampler = BalancedSampler(LABELS, balanced=False, seed=0)
    idx = sampler.epoch_indices(1)
    assert sorted(idx.tolist()) == list(range(100))
    longer = BalancedSampler(LABELS, balanced=False, epoch_size=250).epoch_indices(1)
    assert len(longer) == 250 and np.bincount(longer, minlength=100).min() >= 2


def test_single_class_split_still_samples() -> None:
    idx = BalancedSampler(np.zeros(5, dtype=int), epoch_size=50).epoch_indices(1)
    assert idx.min() >= 0 and idx.max() < 5 and len(idx) == 50


def test_hard_negatives_share_and_state_round_trip() -> None:
    sampler = BalancedSampler(LABELS, epoch_size=40000, seed=3)
    sampler.set_hard_negatives([3, 50, 51], fraction=0.5)  # 3 is positive: ignored
    assert sampler.hard_negatives.tolist() == [50, 51]
    idx = sampler.epoch_indices(2)
    negatives = idx[LABELS[idx] == 0]
    share = np.isin(negatives, [50, 51]).mean()
    # half of the negative draws are swapped in, plus the 2/90 natural chance of the rest
    assert abs(share - (0.5 + 0.5 * 2 / 90)) < 0.02
    assert abs(LABELS[idx].mean() - 0.5) < 0.015  # positives are untouched

    state = json.loads(json.dumps(sampler.state_dict()))
    restored = BalancedSampler(LABELS, epoch_size=40000, seed=99)
    restored.load_state_dict(state)
    assert np.array_equal(restored.epoch_indices(2), idx)


def test_hard_negatives_off_keeps_base_stream() -> None:
    a = BalancedSampler(LABELS, seed=5)
    b = BalancedSampler(LABELS, seed=5)
    b.set_hard_negatives([40], fraction=0.0)
    assert np.array_equal(a.epoch_indices(1), b.epoch_indices(1))


def test_load_state_from_other_split_is_refused() -> None:
    state = BalancedSampler(LABELS).state_dict()
    with pytest.raises(ValueError, match="sampler state"):
        BalancedSampler(np.array([1, 0, 0])).load_state_dict(state)


@pytest.mark.parametrize(("n", "world"), [(10, 3), (12, 4), (5, 8), (7, 1)])
def test_shard_sizes_equal_and_cover(n: int, world: int) -> None:
    indices = np.arange(100, 100 + n, dtype=np.int64)
    parts = [shard(indices, rank, world) for rank in range(world)]
    assert len({len(p) for p in parts}) == 1
    assert len(parts[0]) == -(-n // world)
    assert set(np.concatenate(parts).tolist()) == set(indices.tolist())


def _batch(size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(0)) * 0.01
    return images, torch.zeros(1, 1, size, size)


@pytest.mark.parametrize(
    ("pixel", "where"), [((50, 70), (16, 16)), ((2, 125), (2, 29)), ((127, 0), (31, 0))]
)
def test_patch_centres_on_fracture_and_stays_inside(
    pixel: tuple[int, int], where: tuple[int, int]
) -> None:
    images, masks = _batch()
    masks[0, 0, pixel[0], pixel[1]] = 1.0
    images[0, 0, pixel[0], pixel[1]] = 0.5
    cfg = PatchConfig(enabled=True, size=32, positive_prob=1.0, hard_negative_prob=0.0)
    out_img, out_mask = crop_patches(
        images, masks, torch.tensor([True]), cfg, torch.Generator().manual_seed(1)
    )
    assert out_img.shape == (1, 1, 32, 32) and out_mask.shape == (1, 1, 32, 32)
    assert out_mask.sum().item() == 1.0
    assert out_mask[0, 0, where[0], where[1]].item() == 1.0
    assert out_img[0, 0, where[0], where[1]].item() == 0.5  # image cut from the same window


def test_patch_centres_on_hard_negative_edge_outside_mask() -> None:
    images, masks = _batch()
    images.zero_()  # flat background: the only gradients are the two edges below
    images[0, 0, :, 100:] = 1.0  # edge at column 100, outside the mask
    images[0, 0, 10:20, 10:20] = 5.0  # a stronger edge, but inside the mask
    masks[0, 0, 8:22, 8:22] = 1.0
    cfg = PatchConfig(
        enabled=True,
        size=32,
        positive_prob=0.0,
        hard_negative_prob=1.0,
        hard_negative_quantile=0.95,
    )
    candidates = hard_negative_candidates(images, masks, 0.95).view(128, 128)
    assert not candidates[8:22, 8:22].any()
    assert candidates[:, 100].all() and candidates.sum().item() == 128
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        out_img, out_mask = crop_patches(images, masks, torch.tensor([True]), cfg, gen)
        # The window straddles the edge: it holds both the dark and the bright side.
        assert out_img.min().item() == 0.0 and out_img.max().item() == 1.0
        assert out_mask.sum().item() == 0.0


def test_patch_uniform_is_deterministic_and_batched() -> None:
    images = torch.rand(4, 3, 64, 64)
    masks = (torch.rand(4, 1, 64, 64) > 0.98).float()
    cfg = PatchConfig(enabled=True, size=32, positive_prob=0.5, hard_negative_prob=0.5)
    positive = torch.tensor([True, False, True, False])
    a = crop_patches(images, masks, positive, cfg, torch.Generator().manual_seed(3))
    b = crop_patches(images, masks, positive, cfg, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert a[0].shape == (4, 3, 32, 32) and a[1].shape == (4, 1, 32, 32)
    # Every patch is a window of its own image: find it by exact match.
    for i in range(4):
        windows = images[i, 0].unfold(0, 32, 1).unfold(1, 32, 1)
        assert (windows == a[0][i, 0]).flatten(2).all(2).any()


@pytest.mark.parametrize("q", [0.0, 0.3, 0.9, 0.95, 1.0])
def test_row_quantile_matches_torch(q: float) -> None:
    values = torch.rand(3, 101, generator=torch.Generator().manual_seed(0))
    expected = torch.quantile(values, q, dim=1, keepdim=True)
    assert torch.allclose(row_quantile(values, q), expected, atol=1e-6)


def test_patch_not_smaller_than_image_returns_input() -> None:
    images, masks = _batch(32)
    cfg = PatchConfig(enabled=True, size=64)
    out_img, out_mask = crop_patches(images, masks, torch.tensor([False]), cfg, torch.Generator())
    assert out_img is images and out_mask is masks
