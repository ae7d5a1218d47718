"""Which images an epoch sees, and where patches are cut.

``BalancedSampler`` replaces the seed's WeightedRandomSampler with an index list that is a pure
function of (seed, epoch, mined hard negatives), so a resumed run replays the same epochs and DDP
ranks can shard one list. ``crop_patches`` cuts training patches from batches that are already
at the network scale (``data.image_size``), so lesions appear at the size evaluation sees them
(fix of seed bug 10.1.1, which cropped at native resolution and then resized the crop).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from fxbench.config import PatchConfig

# Streams derived from (seed, epoch) are salted so they never coincide with other users of the seed.
_SALT = 0x5A3B1E


class BalancedSampler:
    """Per-epoch training indices, balanced by image label.

    Args:
        labels: ``[N]`` 0/1 image labels of the training split (1 = fracture).
        positive_fraction: expected share of positive draws when ``balanced``.
        epoch_size: draws per epoch; default N.
        seed: run seed; indices depend only on (seed, epoch) and the mined hard negatives.
        balanced: True = each draw is positive with probability ``positive_fraction``, images drawn
            with replacement (the seed's rule). False = a plain permutation (repeated or cut to
            ``epoch_size``).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        positive_fraction: float = 0.5,
        epoch_size: int | None = None,
        seed: int = 0,
        balanced: bool = True,
    ) -> None:
        self.labels = np.asarray(labels).astype(bool).reshape(-1)
        if self.labels.size == 0:
            raise ValueError("BalancedSampler needs at least one label")
        if not 0.0 < positive_fraction < 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
        self.positive_fraction = float(positive_fraction)
        self.epoch_size = int(epoch_size) if epoch_size is not None else int(self.labels.size)
        self.seed = int(seed)
        self.balanced = bool(balanced)
        self.positives = np.flatnonzero(self.labels)
        self.negatives = np.flatnonzero(~self.labels)
        self.hard_negatives = np.zeros(0, dtype=np.int64)
        self.hard_fraction = 0.0

    def __len__(self) -> int:
        return self.epoch_size

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([_SALT, self.seed, int(epoch)])

    def _balanced_draw(self, rng: np.random.Generator) -> np.ndarray:
        n = self.epoch_size
        if self.positives.size == 0 or self.negatives.size == 0:
            # One class only: balancing is impossible, draw uniformly from what exists.
            return rng.integers(0, self.labels.size, size=n)
        is_pos = rng.random(n) < self.positive_fraction
        pos = self.positives[rng.integers(0, self.positives.size, size=n)]
        neg = self.negatives[rng.integers(0, self.negatives.size, size=n)]
        return np.where(is_pos, pos, neg)

    def _permutation_draw(self, rng: np.random.Generator) -> np.ndarray:
        reps = -(-self.epoch_size // self.labels.size)
        return np.concatenate([rng.permutation(self.labels.size) for _ in range(reps)])[
            : self.epoch_size
        ]

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """Dataset indices for ``epoch`` (int64 ``[epoch_size]``), deterministic in (seed, epoch).

        With mined hard negatives set, each negative draw is replaced with probability
        ``hard_fraction`` by a uniform draw from the mined set.
        """
        rng = self._rng(epoch)
        idx = self._balanced_draw(rng) if self.balanced else self._permutation_draw(rng)
        # Draw the replacement coins even without mined negatives, so the base stream is the same.
        coins = rng.random(idx.size)
        picks = rng.integers(0, max(1, self.hard_negatives.size), size=idx.size)
        if self.hard_negatives.size and self.hard_fraction > 0:
            swap = (~self.labels[idx]) & (coins < self.hard_fraction)
            idx = np.where(swap, self.hard_negatives[picks], idx)
        return idx.astype(np.int64)

    def set_hard_negatives(self, indices: Sequence[int] | np.ndarray, fraction: float) -> None:
        """Use model-mined hard negatives (dataset indices) for a ``fraction`` of negative draws.

        Indices of positive images are ignored (mining ranks negatives only); an empty list or
        ``fraction`` 0 turns mining off.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        arr = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
        if arr.size and (arr.min() < 0 or arr.max() >= self.labels.size):
            raise ValueError(
                f"hard negative indices must be in [0, {self.labels.size}), got {arr.min()}..{arr.max()}"
            )
        self.hard_negatives = arr[~self.labels[arr]]
        self.hard_fraction = float(fraction)

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the knobs and the mined set (labels are checked by count and positives)."""
        return {
            "seed": self.seed,
            "positive_fraction": self.positive_fraction,
            "epoch_size": self.epoch_size,
            "balanced": self.balanced,
            "num_labels": int(self.labels.size),
            "num_positive": int(self.positives.size),
            "hard_negatives": self.hard_negatives.tolist(),
            "hard_fraction": self.hard_fraction,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; refuses state from a different training split."""
        if (
            int(state["num_labels"]) != self.labels.size
            or int(state["num_positive"]) != self.positives.size
        ):
            raise ValueError(
                f"sampler state is for {state['num_labels']} images ({state['num_positive']} positive), "
                f"this split has {self.labels.size} ({self.positives.size})"
            )
        self.seed = int(state["seed"])
        self.positive_fraction = float(state["positive_fraction"])
        self.epoch_size = int(state["epoch_size"])
        self.balanced = bool(state["balanced"])
        self.set_hard_negatives(state["hard_negatives"], float(state["hard_fraction"]))


def shard(indices: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's share of an epoch's indices for DDP: equal length on every rank.

    Pads by wrapping around to a multiple of ``world`` (as DistributedSampler does), then takes
    every ``world``-th index starting at ``rank``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
    n = indices.size
    if n == 0:
        return indices
    total = -(-n // world) * world
    padded = np.resize(indices, total)  # np.resize repeats from the start
    return padded[rank::world]


# --------------------------------------------------------------------------------------
# patches at the network scale


def _uniform(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    """U(0,1) drawn on the generator's device (a CPU generator cannot fill CUDA tensors)."""
    gen_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


def _pick_pixel(
    candidates: torch.Tensor, scores: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniformly pick one True pixel per row of ``candidates [N, P]`` using random ``scores``.

    Returns (flat index [N], found [N] bool).
    """
    masked = torch.where(candidates, scores, torch.full_like(scores, -1.0))
    return masked.argmax(1), candidates.any(1)


def hard_negative_candidates(
    images: torch.Tensor, masks: torch.Tensor, quantile: float
) -> torch.Tensor:
    """High-gradient background pixels: ``[N, H*W]`` bool.

    g = |backward dx| + |backward dy| of the first channel (first row/column 0), 0 inside the mask;
    candidates are pixels with g >= the per-image ``quantile`` of g and g > 0 (the seed's image-edge
    heuristic: cortices, hardware and labels score high; it is not model-based mining).
    """
    grey = images[:, 0].float()
    g = torch.zeros_like(grey)
    g[:, :, 1:] += (grey[:, :, 1:] - grey[:, :, :-1]).abs()
    g[:, 1:, :] += (grey[:, 1:, :] - grey[:, :-1, :]).abs()
    g = g.masked_fill(masks[:, 0] > 0, 0.0).flatten(1)
    return (g >= row_quantile(g, quantile)) & (g > 0)


def row_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q`` quantile of ``values [N, P]`` with linear interpolation -> ``[N, 1]``.

    Sort-based because ``torch.quantile`` refuses inputs above 16M elements (a batch of 1024 px
    images exceeds that).
    """
    ordered = values.sort(dim=1).values
    pos = q * (values.shape[1] - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    frac = pos - lo
    return (ordered[:, lo] + (ordered[:, hi] - ordered[:, lo]) * frac).unsqueeze(1)


def _window_starts(centre: torch.Tensor, size: int, extent: int) -> torch.Tensor:
    """Top/left of ``size`` windows centred on ``centre`` and shifted to stay inside ``extent``."""
    return (centre - size // 2).clamp(0, max(0, extent - size))


def crop_patches(
    images: torch.Tensor,
    masks: torch.Tensor,
    positive: torch.Tensor,
    cfg: PatchConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut one ``cfg.size`` square per image from batches already at the network scale.

    Args:
        images: ``[N, C, H, W]`` float, masks: ``[N, 1, H, W]`` float {0,1}, on any device.
        positive: ``[N]`` bool, fractured images.
        generator: the only randomness source (draws happen on its device).

    Centre rule per image (seed 4.3, with independent draws for the two coins):
    a positive image with a non-empty mask is centred on a uniform fracture pixel with
    probability ``positive_prob``; otherwise, with probability ``hard_negative_prob``, on a
    uniform high-gradient background pixel (``hard_negative_candidates``); otherwise uniform.
    Windows are shifted to stay inside the image; sides smaller than ``cfg.size`` are kept whole.

    Returns ``(images [N, C, s, s], masks [N, 1, s, s])`` with s = min(cfg.size, side).
    """
    n, _, h, w = images.shape
    ph, pw = min(cfg.size, h), min(cfg.size, w)
    if (ph, pw) == (h, w):
        return images, masks
    device = images.device
    coins = _uniform((n, 3), generator, device)
    scores = _uniform((n, 2, h * w), generator, device)
    fracture = masks[:, 0].flatten(1) > 0
    fr_idx, fr_ok = _pick_pixel(fracture, scores[:, 0])
    use_fracture = positive.to(device).bool() & fr_ok & (coins[:, 0] < cfg.positive_prob)
    want_hard = (~use_fracture) & (coins[:, 1] < cfg.hard_negative_prob)
    centre = (coins[:, 2] * (h * w)).long().clamp_max(h * w - 1)  # uniform pixel
    if cfg.hard_negative_prob > 0:  # computed for every batch: `if want_hard.any()` would sync
        hn_idx, hn_ok = _pick_pixel(
            hard_negative_candidates(images, masks, cfg.hard_negative_quantile), scores[:, 1]
        )
        centre = torch.where(want_hard & hn_ok, hn_idx, centre)
    centre = torch.where(use_fracture, fr_idx, centre)
    top = _window_starts(centre // w, ph, h)
    left = _window_starts(centre % w, pw, w)
    rows = (top[:, None] + torch.arange(ph, device=device))[:, :, None]  # [N, ph, 1]
    cols = (left[:, None] + torch.arange(pw, device=device))[:, None, :]  # [N, 1, pw]
    batch = torch.arange(n, device=device)[:, None, None]
    # Advanced indexing puts the indexed dims first: [N, ph, pw, C] -> [N, C, ph, pw].
    out_images = images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    out_masks = masks.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()
    return out_images, out_masks
