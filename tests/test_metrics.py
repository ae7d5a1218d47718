"""Metric definitions against references (scikit-learn) and hand-made masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from fxbench.artifacts.predictions import Predictions
from fxbench.errors import DataError
from fxbench.evaluate import (
    average_precision,
    best_f1,
    evaluate_predictions,
    match_lesions,
    per_image_segmentation,
    presence_metrics,
    remove_small_components,
    roc_auc,
    segmentation_metrics,
    sensitivity_at_specificity,
    threshold_probs,
)
from fxbench.evaluate.metrics import EPS, calibration_bins, expected_calibration_error
from fxbench.io import dumps_json

# ----------------------------------------------------------------------------- presence vs sklearn


def _tied_scores(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    # Few distinct values -> many ties, as with float16 saturation at 1.0.
    scores = rng.integers(0, 8, size=n) / 7.0
    labels = rng.random(n) < 0.3
    labels[0], labels[1] = True, False
    return scores, labels.astype(np.uint8)


@pytest.mark.parametrize("seed", range(8))
def test_auc_and_ap_equal_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = _tied_scores(rng, 613)
    assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) < 1e-9
    assert abs(average_precision(scores, labels) - average_precision_score(labels, scores)) < 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_ap_is_independent_of_row_order_under_ties(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    scores, labels = _tied_scores(rng, 300)
    perm = rng.permutation(300)
    assert average_precision(scores, labels) == pytest.approx(average_precision(scores[perm], labels[perm]), abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5, 0.9, 0.9999, 1.0]), st.booleans()),
             min_size=2, max_size=60)
)
def test_auc_ap_sklearn_property(pairs: list[tuple[float, bool]]) -> None:
    scores = np.array([p[0] for p in pairs])
    labels = np.array([p[1] for p in pairs], dtype=np.uint8)
    if labels.min() == labels.max():
        assert math.isnan(roc_auc(scores, labels))
        return
    assert abs(roc_auc(scores, labels) - roc_auc_score(labels, scores)) < 1e-9
    assert abs(average_precision(scores, labels) - average_precision_score(labels, scores)) < 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_sensitivity_at_specificity_matches_roc_points(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores, labels = _tied_scores(rng, 400)
    scores = scores + rng.normal(0, 0.05, size=scores.size) * (rng.random(scores.size) < 0.5)
    fpr, tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    for spec in (0.9, 0.95):
        expected = tpr[(1 - fpr) >= spec - 1e-12].max()
        assert sensitivity_at_specificity(scores, labels, spec) == pytest.approx(expected, abs=1e-12)


def test_best_f1_brute_force() -> None:
    rng = np.random.default_rng(3)
    scores, labels = _tied_scores(rng, 200)
    best, best_t = -1.0, None
    for t in np.unique(scores)[::-1]:  # descending: ties keep the highest threshold
        pred = scores >= t
        tp = (pred & (labels == 1)).sum()
        f1 = 2 * tp / (pred.sum() + labels.sum())
        if f1 > best:
            best, best_t = f1, t
    f1, thr = best_f1(scores, labels)
    assert f1 == pytest.approx(best, abs=1e-12)
    assert thr == best_t


def test_presence_threshold_metrics_brier_ece() -> None:
    scores = np.array([0.05, 0.15, 0.55, 0.95, 0.65, 0.35, 1.0, 0.0])
    labels = np.array([0, 0, 1, 1, 0, 1, 1, 0])
    m = presence_metrics(scores, labels, threshold=0.5)
    # predicted positive: 0.55, 0.95, 0.65, 1.0 -> tp 3, fp 1; fn 1 (0.35), tn 3
    assert (m["tp_presence"], m["fp_presence"], m["fn_presence"], m["tn_presence"]) == (3, 1, 1, 3)
    assert m["precision_presence"] == pytest.approx(0.75)
    assert m["recall_presence"] == pytest.approx(0.75)
    assert m["specificity_presence"] == pytest.approx(0.75)
    assert m["brier_presence"] == pytest.approx(brier_score_loss(labels, scores))
    # ECE by hand: bins 0:[0.05,0.0]->y 0,0; 1:[0.15]->0; 3:[0.35]->1; 5:[0.55]->1; 6:[0.65]->0; 9:[0.95,1.0]->1,1
    gaps = [(2, abs(0 - 0.025)), (1, 0.15), (1, abs(1 - 0.35)), (1, abs(1 - 0.55)), (1, 0.65), (2, abs(1 - 0.975))]
    assert m["ece_presence"] == pytest.approx(sum(n * g for n, g in gaps) / 8)
    assert m["ece_presence"] == pytest.approx(expected_calibration_error(scores, labels))
    bins = calibration_bins(scores, labels)
    assert bins["count"].sum() == 8 and bins["count"][9] == 2  # 1.0 lands in the last bin
    assert m["notes"] == []


def test_presence_nan_with_notes_when_class_absent() -> None:
    m = presence_metrics(np.array([0.2, 0.7, 0.9]), np.array([1, 1, 1]), 0.5)
    assert math.isnan(m["roc_auc_presence"]) and math.isnan(m["specificity_presence"])
    assert math.isnan(m["sensitivity_at_spec90"])
    assert m["average_precision_presence"] == pytest.approx(1.0)
    assert any("no negative" in n for n in m["notes"])
    m = presence_metrics(np.array([0.2, 0.7]), np.array([0, 0]), 0.5)
    assert math.isnan(m["roc_auc_presence"]) and math.isnan(m["average_precision_presence"])
    assert math.isnan(m["best_f1_presence"]) and math.isnan(m["recall_presence"])
    assert any("no positive" in n for n in m["notes"])


def test_presence_rejects_nan_scores() -> None:
    with pytest.raises(DataError):
        presence_metrics(np.array([0.2, np.nan]), np.array([0, 1]), 0.5)


# ----------------------------------------------------------------------------- pixels


def test_threshold_is_exact_on_float16() -> None:
    p = np.array([0.5, 0.35, 0.3498], dtype=np.float16)  # float16(0.35) = 0.35009765625
    assert threshold_probs(p, 0.5).tolist() == [True, False, False]
    assert threshold_probs(p, 0.35).tolist() == [True, True, False]
    assert threshold_probs(p, 0.3501).tolist() == [True, False, False]  # 0.35009765625 < 0.3501
    assert threshold_probs(p, float(np.float16(0.35))).tolist() == [True, True, False]
    # Same answers as comparing the exact values in float64.
    for t in (0.3, 0.35, 0.350097, 0.3500977, 0.5, 0.49999):
        assert (threshold_probs(p, t) == (p.astype(np.float64) >= t)).all()


def _img(shape: tuple[int, int], *pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=np.uint8)
    for y, x in pixels:
        m[y, x] = 1
    return m


def test_dice_iou_hand_made_cases() -> None:
    shape = (6, 6)
    empty = np.zeros(shape, np.uint8)
    gt = _img(shape, (1, 1), (1, 2), (2, 1), (2, 2))
    pred_half = _img(shape, (1, 1), (1, 2), (4, 4), (4, 5))
    masks = np.stack([empty, empty, gt, gt, gt])
    probs = np.stack([empty, gt, empty, pred_half, gt]).astype(np.float16)  # prob 1 where predicted
    stats = per_image_segmentation(probs, masks, 0.5, lesions=False)
    assert stats.dice[0] == 1.0 and stats.iou[0] == 1.0  # empty / empty
    assert stats.dice[1] < 1e-6 and stats.iou[1] < 1e-6  # empty GT / non-empty prediction
    assert stats.dice[2] < 1e-6 and stats.iou[2] < 1e-6  # non-empty GT / empty prediction
    assert stats.dice[3] == pytest.approx((4 + EPS) / (8 + EPS))  # I=2, |P|=|G|=4
    assert stats.iou[3] == pytest.approx((2 + EPS) / (6 + EPS))
    assert stats.dice[4] == pytest.approx(1.0)
    m = segmentation_metrics(probs, masks, 0.5)
    assert m["num_samples"] == 5 and m["num_positive"] == 3 and m["num_negative"] == 2
    assert m["dice_pos"] == pytest.approx((0 + 0.5 + 1) / 3, abs=1e-6)
    assert m["iou_pos"] == pytest.approx((0 + 1 / 3 + 1) / 3, abs=1e-6)
    assert m["dice"] == pytest.approx((1 + 0 + 0 + 0.5 + 1) / 5, abs=1e-6)
    # pooled pixels: TP = 0+0+0+2+4 = 6; predicted = 4+4+4 = 12; GT = 12
    assert m["precision_pos"] == pytest.approx(6 / 12) and m["recall_pos"] == pytest.approx(6 / 12)
    assert m["dice_pooled"] == pytest.approx(12 / 24)
    assert m["empty_specificity"] == pytest.approx(0.5)
    # the fast path (no lesions) and the per-image path agree
    m_fast = segmentation_metrics(probs, masks, 0.5, lesions=False)
    for key in ("dice", "dice_pos", "iou_pos", "precision_pos", "recall_pos", "empty_specificity"):
        assert m_fast[key] == m[key]


def test_segmentation_nan_and_notes_without_positives() -> None:
    masks = np.zeros((3, 4, 4), np.uint8)
    m = segmentation_metrics(np.zeros((3, 4, 4), np.float16), masks, 0.5)
    assert math.isnan(m["dice_pos"]) and math.isnan(m["lesion_recall"]) and m["dice"] == 1.0
    assert m["empty_specificity"] == 1.0 and m["lesion_fp_per_image"] == 0.0
    assert any("non-empty ground truth" in n for n in m["notes"])


def test_min_component_uses_8_connectivity() -> None:
    mask = np.zeros((10, 10), bool)
    mask[0, 0] = True  # size 1
    mask[3, 3] = mask[4, 4] = mask[5, 5] = True  # diagonal chain: one component of 3
    mask[8, 2:7] = True  # size 5
    kept = remove_small_components(mask, 3)
    assert kept[3, 3] and kept[5, 5] and kept[8, 2:7].all() and not kept[0, 0]
    kept = remove_small_components(mask, 4)
    assert kept.sum() == 5 and kept[8, 2:7].all()
    assert (remove_small_components(mask, 0) == mask).all()
    # through segmentation_metrics: dropping the lone false-positive pixel restores a perfect score
    gt = np.zeros((1, 10, 10), np.uint8)
    gt[0, 8, 2:7] = 1
    probs = np.zeros((1, 10, 10), np.float16)
    probs[0, 8, 2:7] = 0.9
    probs[0, 0, 0] = 0.9
    assert segmentation_metrics(probs, gt, 0.5)["num_fp_components"] == 1
    m = segmentation_metrics(probs, gt, 0.5, min_component=2)
    assert m["dice_pos"] == pytest.approx(1.0) and m["num_fp_components"] == 0


def test_lesion_hit_rules() -> None:
    gt = np.zeros((20, 20), bool)
    gt[2:6, 2:6] = True  # lesion A, 16 px
    gt[2:6, 12:16] = True  # lesion B, 16 px
    gt[15:18, 2:5] = True  # lesion C, 9 px (missed)
    pred = np.zeros_like(gt)
    pred[5, 5] = True  # touches A with 1 px: hit, IoU 1/16 < 0.1
    pred[3:6, 12:16] = True  # covers 12 px of B: IoU 0.75
    pred[10, 18] = True  # touches nothing: false positive
    m = match_lesions(pred, gt)
    assert (m.n_lesions, m.n_hit, m.n_hit_iou10, m.n_pred, m.n_fp) == (3, 2, 1, 3, 1)
    # one component bridging two lesions hits both; IoU = 2*1 / (2 + 16) ... each pair: inter 1, union 16+k-1
    gt2 = np.zeros((5, 9), bool)
    gt2[2, 0:2] = True
    gt2[2, 7:9] = True
    pred2 = np.zeros_like(gt2)
    pred2[2, 1:8] = True  # 7 px, overlaps each lesion by 1 px: IoU 1/8 >= 0.1
    m2 = match_lesions(pred2, gt2)
    assert (m2.n_lesions, m2.n_hit, m2.n_hit_iou10, m2.n_fp) == (2, 2, 2, 0)
    # IoU exactly 0.1 counts (integer comparison, no rounding)
    gt3 = np.zeros((1, 10), bool)
    gt3[0, :] = True
    pred3 = np.zeros_like(gt3)
    pred3[0, 0] = True
    assert match_lesions(pred3, gt3).n_hit_iou10 == 1
    assert match_lesions(np.zeros_like(gt), np.zeros_like(gt)).n_lesions == 0


def test_lesion_aggregates_over_images() -> None:
    masks = np.zeros((2, 20, 20), np.uint8)
    masks[0, 2:6, 2:6] = 1
    masks[0, 2:6, 12:16] = 1
    probs = np.zeros((2, 20, 20), np.float16)
    probs[0, 2:6, 2:6] = 1
    probs[1, 0, 0] = 1  # false-positive component on the negative image
    probs[1, 10, 10] = 1
    m = segmentation_metrics(probs, masks, 0.5)
    assert m["lesion_recall"] == pytest.approx(0.5) and m["num_lesions"] == 2
    assert m["lesion_fp_per_image"] == pytest.approx(1.0)  # 2 FP components / 2 images
    assert m["num_pred_components"] == 3


# ----------------------------------------------------------------------------- full body


def _toy_predictions(n: int = 40, s: int = 16, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, s, s), np.uint8)
    labels = np.arange(n) % 4 == 0
    for i in np.flatnonzero(labels):
        y, x = rng.integers(2, s - 6, size=2)
        masks[i, y:y + 4, x:x + 3] = 1
    probs = np.clip(masks * 0.5 + rng.random((n, s, s)) * 0.6, 0, 1).astype(np.float16)
    return Predictions(
        image_ids=[f"im{i:03d}" for i in range(n)], probs=probs, masks=masks,
        boxes=np.tile([0, 0, s, s], (n, 1)), native_hw=np.tile([s, s], (n, 1)),
        presence={"max": probs.reshape(n, -1).max(1), "head": np.clip(labels * 0.4 + rng.random(n) * 0.6, 0, 1)},
        labels=labels, meta={"split": "val", "tta": "none"},
    )


def test_evaluate_predictions_body() -> None:
    pred = _toy_predictions()
    body = evaluate_predictions(pred, {"threshold": 0.55, "presence_source": "auto", "presence_threshold": 0.5,
                                       "source": "tune", "selected_on": "val"}, bootstrap=200, seed=1)
    for key in ("dice_pos", "iou_pos", "roc_auc_presence", "average_precision_presence",
                "sensitivity_at_spec90", "lesion_recall"):
        lo, hi = body[f"{key}_ci95"]
        assert lo <= body[key] + 1e-12 and body[key] <= hi + 1e-12
    assert body["presence_source"] == "head" and body["resolution"] == "cache" and body["n"] == 40
    assert body["definitions_version"].startswith("fxbench-metrics-")
    assert body["roc_auc_presence"] == pytest.approx(roc_auc_score(pred.labels, pred.presence["head"]), abs=1e-9)
    assert body["presence_sources"]["max"]["roc_auc_presence"] == pytest.approx(
        roc_auc_score(pred.labels, pred.presence["max"]), abs=1e-9)
    assert body["metric_card"]["dice_pos"]["n"] == 10
    assert "selected on val" in body["metric_card"]["dice_pos"]["operating_point"]
    assert any("selected on this split" in n for n in body["notes"])
    seg = segmentation_metrics(pred.probs, pred.masks, 0.55)
    assert body["dice_pos"] == seg["dice_pos"] and body["lesion_recall"] == seg["lesion_recall"]
    dumps_json(body)  # JSON-serialisable
    assert evaluate_predictions(pred, {"threshold": 0.55}, bootstrap=0)["subgroups"] == {}


def test_evaluate_predictions_errors() -> None:
    from fxbench.errors import ConfigError

    pred = _toy_predictions(8)
    with pytest.raises(ConfigError):
        evaluate_predictions(pred, {"presence_source": "max"})  # no threshold
    with pytest.raises(ConfigError):
        evaluate_predictions(pred, {"threshold": 0.5, "presence_source": "topk_mean"})
    with pytest.raises(ConfigError):
        evaluate_predictions(pred, {"threshold": 0.5}, resolution="native")  # no loader
