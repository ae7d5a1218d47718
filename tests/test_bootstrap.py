"""Stratified bootstrap: agreement with the point definitions, determinism, coverage, speed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from fxbench.errors import DataError
from fxbench.evaluate import (
    HEADLINE_METRICS,
    SUBGROUP_COLUMNS,
    PerImageStats,
    aggregate_segmentation,
    average_precision,
    bootstrap_ci,
    bootstrap_distributions,
    metadata_from_records,
    paired_bootstrap_delta,
    per_image_segmentation,
    point_estimates,
    presence_metrics,
    roc_auc,
    sensitivity_at_specificity,
    stratified_indices,
    subgroup_table,
)


def _stats(labels: np.ndarray, dice: np.ndarray, presence: np.ndarray, seed: int = 0) -> PerImageStats:
    """A per-image table with given labels, Dice values and presence scores (synthetic)."""
    rng = np.random.default_rng(seed)
    n = labels.size
    gt_area = np.where(labels, rng.integers(5, 50, n), 0)
    inter = np.where(labels, (gt_area * rng.random(n)).astype(np.int64), 0)
    pred_area = inter + rng.integers(0, 10, n)
    n_les = np.where(labels, rng.integers(1, 3, n), 0)
    n_hit = np.minimum(n_les, rng.integers(0, 3, n))
    return PerImageStats(
        image_ids=[f"i{k}" for k in range(n)], gt_positive=labels.astype(bool), inter=inter,
        pred_area=pred_area, gt_area=gt_area, dice=np.where(labels, dice, 1.0), iou=np.where(labels, dice / 2, 1.0),
        n_lesions=n_les, n_hit=n_hit, n_hit_iou10=np.minimum(n_hit, 1), n_pred=n_hit + 1, n_fp=np.ones(n, np.int64),
        presence=presence, labels=labels,
    )


def _tied_dataset(seed: int, n: int = 613) -> PerImageStats:
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.2
    presence = np.round(np.clip(0.3 * labels + rng.random(n) * 0.7, 0, 1), 1)  # heavy ties
    return _stats(labels, rng.beta(2, 3, n), presence, seed)


def test_stratified_indices_keep_class_counts_and_are_seeded() -> None:
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1, 0, 0])
    idx = stratified_indices(labels, 50, seed=3)
    assert idx.shape == (50, 10)
    assert (labels[idx].sum(axis=1) == 3).all()
    assert (stratified_indices(labels, 50, seed=3) == idx).all()
    assert not (stratified_indices(labels, 50, seed=4) == idx).all()


def test_resampled_metrics_equal_scalar_definitions_on_each_resample() -> None:
    stats = _tied_dataset(0, 200)
    idx = stratified_indices(stats.labels, 5, seed=0)
    metrics = ["dice_pos", "iou_pos", "roc_auc_presence", "average_precision_presence",
               "sensitivity_at_spec90", "sensitivity_at_spec95", "lesion_recall", "precision_pos",
               "empty_specificity", "lesion_fp_per_image", "brier_presence"]
    dist = bootstrap_distributions(stats, metrics=metrics, indices=idx)
    for b in range(idx.shape[0]):
        sub = stats.take(idx[b])
        seg = aggregate_segmentation(sub)
        assert sub.presence is not None
        pres = presence_metrics(sub.presence, sub.labels, 0.5)
        assert dist["roc_auc_presence"][b] == pytest.approx(roc_auc(sub.presence, sub.labels), abs=1e-12)
        assert dist["average_precision_presence"][b] == pytest.approx(average_precision(sub.presence, sub.labels), abs=1e-12)
        assert dist["sensitivity_at_spec90"][b] == pytest.approx(sensitivity_at_specificity(sub.presence, sub.labels, 0.9))
        for key in ("dice_pos", "iou_pos", "lesion_recall", "precision_pos", "empty_specificity", "lesion_fp_per_image"):
            assert dist[key][b] == pytest.approx(seg[key], abs=1e-12), key
        assert dist["brier_presence"][b] == pytest.approx(pres["brier_presence"], abs=1e-12)
        assert dist["sensitivity_at_spec95"][b] == pytest.approx(pres["sensitivity_at_spec95"], abs=1e-12)


def test_point_estimates_equal_aggregates() -> None:
    stats = _tied_dataset(1, 300)
    point = point_estimates(stats, list(HEADLINE_METRICS) + ["dice", "recall_pos", "dice_pooled"])
    seg = aggregate_segmentation(stats)
    assert stats.presence is not None
    pres = presence_metrics(stats.presence, stats.labels, 0.5)
    for key, value in point.items():
        assert value == pytest.approx({**seg, **pres}[key], abs=1e-12), key


def test_bootstrap_ci_is_deterministic_and_brackets_the_estimate() -> None:
    stats = _tied_dataset(2)
    a = bootstrap_ci(stats, 500, seed=7)
    assert a == bootstrap_ci(stats, 500, seed=7)
    assert a != bootstrap_ci(stats, 500, seed=8)
    assert set(a) == {f"{m}_ci95" for m in HEADLINE_METRICS}
    point = point_estimates(stats)
    for m in HEADLINE_METRICS:
        lo, hi = a[f"{m}_ci95"]
        assert lo < hi and lo <= point[m] <= hi
    assert bootstrap_ci(stats, 0) == {}


def test_bootstrap_skips_what_the_table_cannot_support() -> None:
    rng = np.random.default_rng(0)
    probs = rng.random((6, 8, 8)).astype(np.float16)
    masks = (rng.random((6, 8, 8)) > 0.8).astype(np.uint8)
    stats = per_image_segmentation(probs, masks, 0.5, lesions=False)
    assert set(bootstrap_ci(stats, 50)) == {"dice_pos_ci95", "iou_pos_ci95"}
    with pytest.raises(DataError):
        bootstrap_distributions(stats, 50, metrics=["lesion_recall"])


def test_ci_is_nan_when_metric_undefined() -> None:
    labels = np.ones(20, bool)
    stats = _stats(labels, np.full(20, 0.5), np.linspace(0, 1, 20))
    ci = bootstrap_ci(stats, 100)
    assert all(math.isnan(v) for v in ci["roc_auc_presence_ci95"])
    assert ci["dice_pos_ci95"] == [0.5, 0.5]


def test_bootstrap_2000_resamples_613_images_is_seeded_and_brackets_the_estimate() -> None:
    """The full-size case (a FracAtlas test split, 2000 resamples): same seed, same CIs; another
    seed moves them; each CI is ordered and holds the point estimate. (Its speed is measured by
    benchmarks/bootstrap_speed.py, not asserted in a test.)"""
    stats = _tied_dataset(3)
    ci = bootstrap_ci(stats, 2000, seed=0)
    assert ci == bootstrap_ci(stats, 2000, seed=0)
    assert ci != bootstrap_ci(stats, 2000, seed=1)
    point = point_estimates(stats)
    for key in ("dice_pos", "roc_auc_presence", "average_precision_presence"):
        lo, hi = ci[f"{key}_ci95"]
        assert lo < point[key] < hi, (key, lo, point[key], hi)


def test_interval_coverage_on_simulated_data() -> None:
    """200 binormal datasets with known AUC and known mean Dice: the 95% CI covers ~95%."""
    rng = np.random.default_rng(2024)
    d = 1.0
    true_auc = norm.cdf(d / math.sqrt(2))  # AUC of N(d,1) vs N(0,1)
    a, b = 2.0, 3.0
    true_dice = a / (a + b)  # Beta(2,3) mean
    n_pos, n_neg, n_sets = 60, 180, 200
    covered_auc = covered_dice = 0
    labels = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    for k in range(n_sets):
        scores = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
        dice = rng.beta(a, b, n_pos + n_neg)
        stats = _stats(labels, dice, scores, seed=k)
        ci = bootstrap_ci(stats, 300, seed=k, metrics=["roc_auc_presence", "dice_pos"])
        covered_auc += ci["roc_auc_presence_ci95"][0] <= true_auc <= ci["roc_auc_presence_ci95"][1]
        covered_dice += ci["dice_pos_ci95"][0] <= true_dice <= ci["dice_pos_ci95"][1]
    assert 0.85 <= covered_auc / n_sets <= 0.99
    assert 0.85 <= covered_dice / n_sets <= 0.99


def test_paired_delta() -> None:
    stats_a = _tied_dataset(4, 300)
    same = paired_bootstrap_delta(stats_a, stats_a, n_resamples=200)
    for row in same.values():
        assert row["delta"] == 0 and row["delta_ci95"] == [0.0, 0.0]
    assert stats_a.presence is not None
    better = stats_a.with_presence(stats_a.presence + 0.3 * stats_a.labels, stats_a.labels)
    better.dice = np.where(stats_a.gt_positive, np.minimum(stats_a.dice + 0.1, 1), 1.0)
    res = paired_bootstrap_delta(better, stats_a, n_resamples=500, seed=1)
    assert res["roc_auc_presence"]["delta"] > 0 and res["roc_auc_presence"]["delta_ci95"][0] > 0
    assert res["dice_pos"]["delta_ci95"][0] > 0 and res["dice_pos"]["share_a_better"] == 1.0
    assert res["roc_auc_presence"]["a"] == pytest.approx(roc_auc(better.presence, better.labels))
    assert paired_bootstrap_delta(better, stats_a, n_resamples=500, seed=1) == res
    with pytest.raises(DataError):
        paired_bootstrap_delta(stats_a, stats_a.take(np.arange(10)))


def test_subgroup_table_matches_metrics_on_the_subset() -> None:
    stats = _tied_dataset(5, 400)
    rng = np.random.default_rng(5)
    meta = {"hand": (rng.random(400) < 0.3).astype(np.uint8), "hip": np.zeros(400, np.uint8)}
    table = subgroup_table(stats, meta, n_resamples=100, seed=0)
    assert list(table) == ["hand", "hip"]
    sub = stats.take(meta["hand"].astype(bool))
    row = table["hand"]
    assert row["n"] == sub.n and row["n_pos"] == int(sub.labels.sum())
    assert row["dice_pos"] == pytest.approx(aggregate_segmentation(sub)["dice_pos"])
    assert sub.presence is not None
    assert row["roc_auc_presence"] == pytest.approx(roc_auc(sub.presence, sub.labels))
    assert row["dice_pos_ci95"][0] <= row["dice_pos"] <= row["dice_pos_ci95"][1]
    assert table["hip"]["n"] == 0 and "warning" in table["hip"]
    with pytest.raises(DataError):
        subgroup_table(stats, {"bad": np.full(400, 2)})


def test_metadata_from_records() -> None:
    records = [{"image_id": "b", "hand": "1", "hip": "0", "frontal": "True"},
               {"image_id": "a", "hand": "0", "hip": "1", "frontal": "False"}]
    meta = metadata_from_records(["a", "b"], records)
    assert list(meta) == [c for c in SUBGROUP_COLUMNS if c in ("hand", "hip", "frontal")]
    assert meta["hand"].tolist() == [0, 1] and meta["frontal"].tolist() == [0, 1]
    with pytest.raises(DataError):
        metadata_from_records(["a", "zz"], records)
    with pytest.raises(DataError):
        metadata_from_records(["a"], [{"image_id": "a", "hand": "maybe"}])
