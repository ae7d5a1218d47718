"""Paired tests: bootstrap of differences, DeLong, McNemar, Holm (against independent references)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fxbench.errors import DataError
from fxbench.evaluate import PerImageStats
from fxbench.evaluate.paired import (
    bootstrap_p_value,
    delong_test,
    holm_adjust,
    mcnemar_test,
    paired_bootstrap,
)


def _table(labels: np.ndarray, dice: np.ndarray, presence: np.ndarray) -> PerImageStats:
    n = labels.size
    gt_area = np.where(labels, 20, 0)
    inter = np.where(labels, (20 * dice).astype(np.int64), 0)
    return PerImageStats(
        image_ids=[f"i{k}" for k in range(n)], gt_positive=labels.astype(bool), inter=inter,
        pred_area=inter + 2, gt_area=gt_area, dice=np.where(labels, dice, 1.0), iou=np.where(labels, dice / 2, 1.0),
        n_lesions=labels.astype(np.int64), n_hit=labels.astype(np.int64), n_hit_iou10=labels.astype(np.int64),
        n_pred=np.ones(n, np.int64), n_fp=np.zeros(n, np.int64), presence=presence, labels=labels.astype(bool),
    )


def _pair(seed: int = 0, n: int = 120):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.3
    dice_a = rng.beta(2, 3, n)
    dice_b = np.clip(dice_a + rng.normal(0.05, 0.1, n), 0, 1)
    pres_a = np.clip(0.4 * y + rng.random(n) * 0.6, 0, 1)
    pres_b = np.clip(0.5 * y + rng.random(n) * 0.5, 0, 1)
    return y, _table(y, dice_a, pres_a), _table(y, dice_b, pres_b)


def test_paired_bootstrap_agrees_with_an_independent_numpy_implementation() -> None:
    y, a, b = _pair()
    n_res, seed = 300, 7
    got = paired_bootstrap(a, b, ["dice_pos", "roc_auc_presence"], n_resamples=n_res, seed=seed)

    # Independent: the documented draw (positives, then negatives, one default_rng(seed)),
    # plain per-resample formulas (sklearn for AUC), percentile CI, the documented p-value.
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    idx = np.concatenate([pos[rng.integers(0, pos.size, (n_res, pos.size))],
                          neg[rng.integers(0, neg.size, (n_res, neg.size))]], axis=1)
    d_dice = np.array([b.dice[r][y[r]].mean() - a.dice[r][y[r]].mean() for r in idx])
    d_auc = np.array([roc_auc_score(y[r], b.presence[r]) - roc_auc_score(y[r], a.presence[r]) for r in idx])
    for name, d, point in (("dice_pos", d_dice, b.dice[y].mean() - a.dice[y].mean()),
                           ("roc_auc_presence", d_auc, roc_auc_score(y, b.presence) - roc_auc_score(y, a.presence))):
        res = got[name]
        assert res.delta == pytest.approx(point, abs=1e-12)
        assert res.delta_ci95 == pytest.approx(list(np.percentile(d, [2.5, 97.5])), abs=1e-12)
        p = min(1.0, 2 * min(1 + np.sum(d <= 0), 1 + np.sum(d >= 0)) / (n_res + 1))
        assert res.p_value == pytest.approx(p, abs=1e-12)
        assert res.n_resamples == n_res
    assert got["dice_pos"].delta > 0 and got["dice_pos"].p_value < 0.05


def test_paired_bootstrap_of_a_table_with_itself_is_exactly_zero_with_p_one() -> None:
    _, a, _ = _pair(1)
    for res in paired_bootstrap(a, a, n_resamples=200).values():
        assert res.delta == 0.0 and res.delta_ci95 == [0.0, 0.0] and res.p_value == 1.0


def test_paired_bootstrap_refuses_different_images_or_labels() -> None:
    _, a, b = _pair(2)
    with pytest.raises(DataError, match="same images"):
        paired_bootstrap(a, b.take(np.arange(10)))
    flipped = b.take(np.arange(b.n))
    flipped.labels[0] = ~flipped.labels[0]
    with pytest.raises(DataError, match="labels"):
        paired_bootstrap(a, flipped)


def test_bootstrap_p_value_definition() -> None:
    assert bootstrap_p_value(np.zeros(10)) == 1.0
    assert bootstrap_p_value(np.ones(99)) == pytest.approx(2 / 100)  # 1 + 0 below zero
    assert bootstrap_p_value(np.array([-1.0] * 10 + [1.0] * 89)) == pytest.approx(2 * 11 / 100)
    assert math.isnan(bootstrap_p_value(np.array([np.nan])))


def test_delong_variance_matches_a_hand_computed_example() -> None:
    # Positives are images 0-2, negatives 3-5. By hand (see the arithmetic in docs/metrics.md):
    # A: V10 = (1, 2/3, 2/3), V01 = (1/3, 1, 1), AUC 7/9, Var = (1/27)/3 + (4/27)/3 = 5/81.
    # B (ties at 0.5): V10 = (1, 5/6, 5/6), V01 = (2/3, 1, 1), AUC 8/9, Var = 5/324.
    # Cov = (1/54)/3 + (2/27)/3 = 5/162; Var(B - A) = 5/81 + 5/324 - 10/162 = 5/324.
    labels = np.array([1, 1, 1, 0, 0, 0])
    a = np.array([0.9, 0.6, 0.4, 0.7, 0.3, 0.2])
    b = np.array([0.8, 0.5, 0.5, 0.5, 0.4, 0.1])
    r = delong_test(a, b, labels)
    assert r.auc_a == pytest.approx(7 / 9) and r.auc_b == pytest.approx(8 / 9)
    assert r.var_a == pytest.approx(5 / 81, abs=1e-12)
    assert r.var_b == pytest.approx(5 / 324, abs=1e-12)
    assert r.covariance == pytest.approx(5 / 162, abs=1e-12)
    assert r.se_delta == pytest.approx(math.sqrt(5 / 324), abs=1e-12)
    assert r.z == pytest.approx(2 / math.sqrt(5), abs=1e-9)
    assert r.p_value == pytest.approx(math.erfc((2 / math.sqrt(5)) / math.sqrt(2)), abs=1e-9)
    same = delong_test(a, a, labels)
    assert same.delta == 0.0 and same.p_value == 1.0


def test_delong_auc_matches_sklearn_on_random_ties() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.25
    s = np.round(rng.random(300) + 0.3 * y, 1)
    assert delong_test(s, s, y).auc_a == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_mcnemar_exact() -> None:
    labels = np.array([1] * 8 + [0] * 2, dtype=bool)
    a = np.array([1, 0, 0, 0, 0, 0, 0, 1, 0, 0], dtype=bool)  # right on 0, 7, 8, 9
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0, 0], dtype=bool)  # right on 1-9
    r = mcnemar_test(a, b, labels)
    assert (r.a_only_correct, r.b_only_correct) == (1, 6)
    assert r.p_value == pytest.approx(2 * (1 + 7) / 2**7)
    assert mcnemar_test(a, a, labels).p_value == 1.0


def test_holm() -> None:
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm_adjust([0.5, float("nan"), 0.01])
    assert out[0] == pytest.approx(0.5) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm_adjust([0.9, 0.8]) == [1.0, 1.0]
