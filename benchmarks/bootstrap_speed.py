"""Time the stratified bootstrap at full size: 2000 resamples of 613 images (a FracAtlas test split).

    PYTHONPATH=src python benchmarks/bootstrap_speed.py

Prints seconds per call (best of 3). Speed is measured here, never asserted in tests/.
"""

from __future__ import annotations

import time

import numpy as np

from fxbench.evaluate import PerImageStats, bootstrap_ci


def synthetic_stats(n: int = 613, seed: int = 3) -> PerImageStats:
    """A per-image table like a FracAtlas test split: ~20% positives, tied presence scores."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    gt_area = np.where(labels, rng.integers(5, 50, n), 0)
    inter = np.where(labels, (gt_area * rng.random(n)).astype(np.int64), 0)
    n_les = np.where(labels, rng.integers(1, 3, n), 0)
    n_hit = np.minimum(n_les, rng.integers(0, 3, n))
    dice = np.where(labels, rng.beta(2, 3, n), 1.0)
    return PerImageStats(
        image_ids=[f"i{k}" for k in range(n)], gt_positive=labels, inter=inter,
        pred_area=inter + rng.integers(0, 10, n), gt_area=gt_area, dice=dice, iou=dice / 2,
        n_lesions=n_les, n_hit=n_hit, n_hit_iou10=np.minimum(n_hit, 1), n_pred=n_hit + 1,
        n_fp=np.ones(n, np.int64), presence=np.round(np.clip(0.3 * labels + rng.random(n) * 0.7, 0, 1), 1),
        labels=labels.astype(np.uint8),
    )


def main(n: int = 613, resamples: int = 2000) -> None:
    stats = synthetic_stats(n)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        bootstrap_ci(stats, resamples, seed=0)
        best = min(best, time.perf_counter() - start)
    print(f"bootstrap_ci: {resamples} resamples x {n} images: {best:.3f} s (best of 3)")


if __name__ == "__main__":
    main()
