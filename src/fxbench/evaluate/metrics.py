"""Metric definitions: segmentation, lesion-wise and presence metrics (pure numpy).

docs/metrics.md is the prose version of this module; a definition changes only together with
``DEFINITIONS_VERSION``. Conventions used throughout:

* a pixel is predicted positive when ``prob >= threshold``, compared exactly on the stored value
  (float16 probabilities are not rounded to the threshold's precision or vice versa);
* an image is *positive* when its ground-truth mask is non-empty at the scoring resolution;
* connected components use 8-connectivity everywhere (lesions, predicted components,
  ``min_component``);
* a metric whose denominator is empty is NaN, never 0, and the ``notes`` list says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from fxbench.errors import DataError

DEFINITIONS_VERSION = "fxbench-metrics-1"
#: Smoothing of the per-image Dice/IoU (the seed's value): empty-vs-empty scores 1.
EPS = 1e-6
#: A GT lesion counts for ``lesion_recall_iou10`` when one predicted component has IoU >= this.
LESION_IOU_MIN = 0.1
#: Specificities at which sensitivity is reported (key suffixes spec90, spec95).
SPECIFICITY_LEVELS = (0.90, 0.95)
ECE_BINS = 10
_EIGHT = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------------------
# pixels and components


def threshold_probs(probs: np.ndarray, threshold: float) -> np.ndarray:
    """Boolean map ``prob >= threshold`` (same shape), exact for any float dtype.

    The comparison is done in the array's own dtype against the smallest representable value
    >= ``threshold``, which equals comparing the exact stored values in float64, without
    up-casting a [N,S,S] float16 array.
    """
    probs = np.asarray(probs)
    if not np.issubdtype(probs.dtype, np.floating):
        probs = probs.astype(np.float64)
    t = probs.dtype.type(threshold)
    if float(t) < float(threshold):
        t = np.nextafter(t, probs.dtype.type(np.inf))
    return probs >= t


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components of a 2-D boolean mask: (int32 label map [H,W], count)."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    return labels, int(count)


def remove_small_components(mask: np.ndarray, min_component: int) -> np.ndarray:
    """Drop 8-connected components with fewer than ``min_component`` pixels from a 2-D bool mask.

    ``min_component`` <= 1 keeps everything (returns the input).
    """
    mask = np.asarray(mask, dtype=bool)
    if min_component <= 1 or not mask.any():
        return mask
    labels, count = label_components(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes >= min_component
    keep[0] = False
    return keep[labels]


@dataclass(frozen=True)
class LesionMatch:
    """Lesion-wise matching of one image (counts).

    ``n_lesions`` GT components; ``n_hit`` of them touched by a predicted component (any pixel
    overlap); ``n_hit_iou10`` of them with one predicted component at IoU >= 0.1;
    ``n_pred`` predicted components; ``n_fp`` predicted components touching no GT pixel.
    """

    n_lesions: int = 0
    n_hit: int = 0
    n_hit_iou10: int = 0
    n_pred: int = 0
    n_fp: int = 0


def match_lesions(pred: np.ndarray, gt: np.ndarray) -> LesionMatch:
    """Match 8-connected components of a predicted and a GT mask (both bool [H,W]).

    Hit rule: a GT lesion is *hit* when at least one of its pixels is covered by a predicted
    component (after ``min_component`` filtering, which the caller applies). A stricter hit,
    counted separately, needs one predicted component with IoU >= 0.1 against the lesion.
    A predicted component that overlaps two lesions hits both; a lesion overlapped by several
    components is hit once. A predicted component is a false positive when it touches no GT pixel.
    """
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    if not gt.any() and not pred.any():
        return LesionMatch()
    g_lab, n_g = label_components(gt)
    p_lab, n_p = label_components(pred)
    if n_g == 0 or n_p == 0:
        return LesionMatch(n_lesions=n_g, n_pred=n_p, n_fp=n_p)
    both = (g_lab > 0) & (p_lab > 0)
    # Contingency table of pixel overlaps between every (lesion, component) pair.
    pair = g_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both]
    inter = np.bincount(pair, minlength=(n_g + 1) * (n_p + 1)).reshape(n_g + 1, n_p + 1)[1:, 1:]
    g_size = np.bincount(g_lab.ravel(), minlength=n_g + 1)[1:]
    p_size = np.bincount(p_lab.ravel(), minlength=n_p + 1)[1:]
    union = g_size[:, None] + p_size[None, :] - inter
    touched = inter > 0
    # IoU >= 0.1 written in integers (10 * inter >= union) so no float rounding decides a hit.
    strict = touched & (10 * inter >= union)
    return LesionMatch(
        n_lesions=n_g,
        n_hit=int(touched.any(axis=1).sum()),
        n_hit_iou10=int(strict.any(axis=1).sum()),
        n_pred=n_p,
        n_fp=int((~touched.any(axis=0)).sum()),
    )


# --------------------------------------------------------------------------------------
# per-image table


@dataclass
class PerImageStats:
    """Everything the aggregate metrics, the bootstrap and the subgroup table need, per image.

    All arrays have length N (images). Pixel counts are at the scoring resolution.

    Attributes:
        image_ids: N ids.
        gt_positive: bool [N], ground-truth mask non-empty.
        inter, pred_area, gt_area: int64 [N] pixel counts |P∩G|, |P|, |G|.
        dice, iou: float64 [N] per-image scores with eps smoothing (empty/empty = 1).
        n_lesions, n_hit, n_hit_iou10, n_pred, n_fp: int64 [N] lesion counts (zeros when lesions
            were not computed; see ``has_lesions``).
        has_lesions: whether lesion matching was run.
        presence: float64 [N] image-level score of the chosen source, or None.
        labels: bool [N] image label used for presence metrics (defaults to ``gt_positive``).
    """

    image_ids: list[str]
    gt_positive: np.ndarray
    inter: np.ndarray
    pred_area: np.ndarray
    gt_area: np.ndarray
    dice: np.ndarray
    iou: np.ndarray
    n_lesions: np.ndarray
    n_hit: np.ndarray
    n_hit_iou10: np.ndarray
    n_pred: np.ndarray
    n_fp: np.ndarray
    has_lesions: bool = True
    presence: np.ndarray | None = None
    labels: np.ndarray = field(default=None)  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.gt_positive = np.asarray(self.gt_positive).astype(bool)
        if self.labels is None:
            self.labels = self.gt_positive.copy()
        self.labels = np.asarray(self.labels).astype(bool)
        if self.presence is not None:
            self.presence = np.asarray(self.presence, dtype=np.float64)
            if self.presence.shape != (len(self.image_ids),):
                raise DataError(
                    f"presence scores have shape {list(self.presence.shape)}, expected [{len(self.image_ids)}]"
                )

    @property
    def n(self) -> int:
        return len(self.image_ids)

    def with_presence(self, scores: np.ndarray, labels: np.ndarray | None = None) -> PerImageStats:
        """A copy carrying presence scores (float [N]) and optionally image labels (0/1 [N])."""
        return replace(self, presence=np.asarray(scores, dtype=np.float64),
                       labels=self.gt_positive if labels is None else np.asarray(labels).astype(bool))

    def take(self, indices: np.ndarray) -> PerImageStats:
        """Rows at ``indices`` (int positions or bool mask [N])."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        arrays = {
            name: getattr(self, name)[idx]
            for name in ("gt_positive", "inter", "pred_area", "gt_area", "dice", "iou",
                         "n_lesions", "n_hit", "n_hit_iou10", "n_pred", "n_fp", "labels")
        }
        return PerImageStats(
            image_ids=[self.image_ids[i] for i in idx],
            has_lesions=self.has_lesions,
            presence=None if self.presence is None else self.presence[idx],
            **arrays,
        )

    def rows(self) -> list[dict[str, Any]]:
        """One JSON/CSV-ready dict per image (for per-image CSVs and best/worst overlays)."""
        out = []
        for i, image_id in enumerate(self.image_ids):
            row: dict[str, Any] = {
                "image_id": image_id,
                "gt_positive": int(self.gt_positive[i]),
                "label": int(self.labels[i]),
                "dice": float(self.dice[i]),
                "iou": float(self.iou[i]),
                "gt_pixels": int(self.gt_area[i]),
                "pred_pixels": int(self.pred_area[i]),
                "tp_pixels": int(self.inter[i]),
            }
            if self.has_lesions:
                row.update(lesions=int(self.n_lesions[i]), lesions_hit=int(self.n_hit[i]),
                           lesions_hit_iou10=int(self.n_hit_iou10[i]),
                           pred_components=int(self.n_pred[i]), fp_components=int(self.n_fp[i]))
            if self.presence is not None:
                row["presence"] = float(self.presence[i])
            out.append(row)
        return out


def dice_iou(inter: np.ndarray, pred_area: np.ndarray, gt_area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU from pixel counts (arrays [N]), with the seed's eps smoothing.

    dice = (2|P∩G| + eps) / (|P| + |G| + eps);  iou = (|P∩G| + eps) / (|P| + |G| - |P∩G| + eps).
    Empty GT and empty prediction give exactly 1; one side empty gives ~eps (about 0).
    """
    inter = np.asarray(inter, dtype=np.float64)
    p = np.asarray(pred_area, dtype=np.float64)
    g = np.asarray(gt_area, dtype=np.float64)
    dice = (2.0 * inter + EPS) / (p + g + EPS)
    iou = (inter + EPS) / (p + g - inter + EPS)
    return dice, iou


def image_pixel_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(|P∩G|, |P|, |G|) for one image; ``pred`` and ``gt`` are bool [H,W] of equal shape."""
    if pred.shape != gt.shape:
        raise DataError(f"prediction shape {pred.shape} != ground-truth shape {gt.shape}")
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred)), int(np.count_nonzero(gt))


def stats_from_binary(
    preds: Iterable[np.ndarray],
    gts: Iterable[np.ndarray],
    image_ids: Sequence[str] | None = None,
    lesions: bool = True,
) -> PerImageStats:
    """Per-image table from already-binarised predictions and GT masks (bool [H_i,W_i] each).

    Images may have different sizes (native resolution). Used by :func:`per_image_segmentation`
    and by the native-resolution path.
    """
    rows = []
    for pred, gt in zip(preds, gts, strict=True):
        pred = np.asarray(pred, dtype=bool)
        gt = np.asarray(gt, dtype=bool)
        counts = image_pixel_counts(pred, gt)
        m = match_lesions(pred, gt) if lesions else LesionMatch()
        rows.append((*counts, m.n_lesions, m.n_hit, m.n_hit_iou10, m.n_pred, m.n_fp))
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 8)
    return _stats_from_table(table, image_ids, lesions)


def _stats_from_table(table: np.ndarray, image_ids: Sequence[str] | None, lesions: bool) -> PerImageStats:
    n = table.shape[0]
    ids = [str(i) for i in image_ids] if image_ids is not None else [str(i) for i in range(n)]
    if len(ids) != n:
        raise DataError(f"{len(ids)} image ids for {n} images")
    inter, pred_area, gt_area = table[:, 0], table[:, 1], table[:, 2]
    dice, iou = dice_iou(inter, pred_area, gt_area)
    return PerImageStats(
        image_ids=ids, gt_positive=gt_area > 0, inter=inter, pred_area=pred_area, gt_area=gt_area,
        dice=dice, iou=iou, n_lesions=table[:, 3], n_hit=table[:, 4], n_hit_iou10=table[:, 5],
        n_pred=table[:, 6], n_fp=table[:, 7], has_lesions=lesions,
    )


def per_image_segmentation(
    probs: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    threshold: float,
    min_component: int = 0,
    *,
    lesions: bool = True,
    image_ids: Sequence[str] | None = None,
) -> PerImageStats:
    """Per-image pixel counts, Dice/IoU and lesion matches at one threshold.

    Args:
        probs: [N,H,W] probabilities (any float dtype; float16 as stored), or a sequence of
            [H_i,W_i] maps of different sizes.
        masks: ground truth of the same shapes, any dtype, non-zero = fracture.
        threshold: pixel probability threshold, prediction = ``prob >= threshold``.
        min_component: drop predicted 8-connected components with fewer pixels (0/1 = keep all).
        lesions: run connected-component matching (the slow part); False leaves lesion counts 0.
        image_ids: optional ids carried into the table.
    """
    if not 0.0 <= threshold <= 1.0 or threshold != threshold:
        raise DataError(f"pixel threshold must be in [0, 1], got {threshold}")
    if isinstance(probs, np.ndarray) and isinstance(masks, np.ndarray) and probs.ndim == 3 \
            and min_component <= 1 and not lesions:
        # Fast path for threshold sweeps: whole-batch counting in chunks (bounded memory).
        if probs.shape != masks.shape:
            raise DataError(f"probs shape {list(probs.shape)} != masks shape {list(masks.shape)}")
        table = np.zeros((probs.shape[0], 8), dtype=np.int64)
        for start in range(0, probs.shape[0], 64):
            p = threshold_probs(probs[start:start + 64], threshold)
            g = masks[start:start + 64] > 0
            table[start:start + 64, 0] = np.count_nonzero(p & g, axis=(1, 2))
            table[start:start + 64, 1] = np.count_nonzero(p, axis=(1, 2))
            table[start:start + 64, 2] = np.count_nonzero(g, axis=(1, 2))
        return _stats_from_table(table, image_ids, lesions=False)
    if len(probs) != len(masks):
        raise DataError(f"{len(probs)} probability maps for {len(masks)} masks")
    preds = (remove_small_components(threshold_probs(p, threshold), min_component) for p in probs)
    gts = (np.asarray(m) > 0 for m in masks)
    return stats_from_binary(preds, gts, image_ids=image_ids, lesions=lesions)


# --------------------------------------------------------------------------------------
# aggregates


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den > 0 else float("nan")


def aggregate_segmentation(stats: PerImageStats) -> dict[str, Any]:
    """Aggregate a per-image table into the segmentation and lesion metrics.

    Returns keys: num_samples, num_positive, num_negative, dice, iou, dice_pos, iou_pos,
    dice_pooled, precision_pos, recall_pos, empty_specificity, and (when lesions were computed)
    lesion_recall, lesion_recall_iou10, lesion_fp_per_image, num_lesions, num_lesions_hit,
    num_lesions_hit_iou10, num_pred_components, num_fp_components; plus ``notes`` (list[str]).
    """
    pos = stats.gt_positive
    n, n_pos = stats.n, int(pos.sum())
    notes: list[str] = []
    tp = int(stats.inter.sum())
    fp = int(stats.pred_area.sum()) - tp
    fn = int(stats.gt_area.sum()) - tp
    out: dict[str, Any] = {
        "num_samples": n,
        "num_positive": n_pos,
        "num_negative": n - n_pos,
        "dice": float(stats.dice.mean()) if n else float("nan"),
        "iou": float(stats.iou.mean()) if n else float("nan"),
        "dice_pos": float(stats.dice[pos].mean()) if n_pos else float("nan"),
        "iou_pos": float(stats.iou[pos].mean()) if n_pos else float("nan"),
        "dice_pooled": _ratio(2 * tp, 2 * tp + fp + fn),
        "precision_pos": _ratio(tp, tp + fp),
        "recall_pos": _ratio(tp, tp + fn),
        "empty_specificity": _ratio(int((stats.pred_area[~pos] == 0).sum()), n - n_pos),
    }
    if n == 0:
        notes.append("no images: every segmentation metric is NaN")
    if n and not n_pos:
        notes.append("no image with a non-empty ground truth: dice_pos, iou_pos, recall_pos and lesion metrics are NaN")
    if n and n_pos == n:
        notes.append("no image with an empty ground truth: empty_specificity is NaN")
    if n and tp + fp == 0:
        notes.append("no pixel predicted positive: precision_pos is NaN")
    if stats.has_lesions:
        n_les = int(stats.n_lesions.sum())
        out.update(
            lesion_recall=_ratio(int(stats.n_hit.sum()), n_les),
            lesion_recall_iou10=_ratio(int(stats.n_hit_iou10.sum()), n_les),
            lesion_fp_per_image=_ratio(int(stats.n_fp.sum()), n),
            num_lesions=n_les,
            num_lesions_hit=int(stats.n_hit.sum()),
            num_lesions_hit_iou10=int(stats.n_hit_iou10.sum()),
            num_pred_components=int(stats.n_pred.sum()),
            num_fp_components=int(stats.n_fp.sum()),
        )
    out["notes"] = notes
    return out


def segmentation_metrics(
    probs: np.ndarray | Sequence[np.ndarray],
    masks: np.ndarray | Sequence[np.ndarray],
    threshold: float,
    min_component: int = 0,
    *,
    lesions: bool = True,
) -> dict[str, Any]:
    """Segmentation (and lesion) metrics of probability maps [N,H,W] against masks [N,H,W].

    ``lesions=False`` skips connected-component matching (4-10x faster; for threshold grids
    without ``min_component``). See :func:`aggregate_segmentation` for the keys.
    """
    return aggregate_segmentation(per_image_segmentation(probs, masks, threshold, min_component, lesions=lesions))


# --------------------------------------------------------------------------------------
# presence (image-level) metrics
#
# Every ranking metric is computed from per-score-group counts: scores are grouped by distinct
# value (descending), and cpos[b, g] / cneg[b, g] count positives / negatives with that score in
# row b. A plain evaluation is one row of ones; a bootstrap resample is one row of multiplicities.
# Ties are therefore handled in one place, identically for point estimates and bootstrap.


def check_scores(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert presence scores (float [N]) and labels (0/1 [N]) -> (float64, bool)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise DataError(f"{s.size} presence scores for {y.size} labels")
    if np.isnan(s).any():
        raise DataError(f"presence scores contain {int(np.isnan(s).sum())} NaN values",
                        "the model produced NaN; check the predictions artifact")
    return s, y.astype(bool)


def score_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct scores in descending order [M] and each score's group index [N]."""
    uniq, inverse = np.unique(scores, return_inverse=True)
    return uniq[::-1].copy(), (uniq.size - 1 - inverse.reshape(-1)).astype(np.int64)


def group_counts(group: np.ndarray, labels: np.ndarray, n_groups: int,
                 weights: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Counts per score group [1,M] of positives and negatives (optionally weighted)."""
    w = np.ones(group.shape, dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)
    cpos = np.bincount(group[labels], weights=w[labels], minlength=n_groups)[None, :]
    cneg = np.bincount(group[~labels], weights=w[~labels], minlength=n_groups)[None, :]
    return cpos, cneg


def auc_from_counts(cpos: np.ndarray, cneg: np.ndarray) -> np.ndarray:
    """Tie-aware ROC AUC per row (Mann-Whitney: P(s+ > s-) + 0.5 P(s+ = s-)). [B,M] -> [B]."""
    n_pos = cpos.sum(axis=1)
    n_neg = cneg.sum(axis=1)
    neg_at_or_above = np.cumsum(cneg, axis=1)  # groups are in descending score order
    neg_below = n_neg[:, None] - neg_at_or_above
    num = (cpos * (neg_below + 0.5 * cneg)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((n_pos > 0) & (n_neg > 0), num / (n_pos * n_neg), np.nan)


def ap_from_counts(cpos: np.ndarray, cneg: np.ndarray) -> np.ndarray:
    """Step-wise average precision per row (scikit-learn convention, ties as one step). [B,M] -> [B].

    AP = sum over distinct thresholds t_k (descending) of (R_k - R_{k-1}) * P_k, where P_k and R_k
    are precision and recall when predicting ``score >= t_k``.
    """
    n_pos = cpos.sum(axis=1)
    tp = np.cumsum(cpos, axis=1)
    fp = np.cumsum(cneg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        return np.where(n_pos > 0, (cpos * precision).sum(axis=1) / n_pos, np.nan)


def sensitivity_at_specificity_from_counts(cpos: np.ndarray, cneg: np.ndarray, specificity: float) -> np.ndarray:
    """Highest sensitivity over thresholds whose specificity is >= ``specificity``. [B,M] -> [B].

    Operating points are ``score >= t`` for every distinct score t plus "predict none"
    (sensitivity 0, specificity 1); no interpolation between points.
    """
    n_pos = cpos.sum(axis=1)
    n_neg = cneg.sum(axis=1)
    tp = np.cumsum(cpos, axis=1)
    fp = np.cumsum(cneg, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        spec = (n_neg[:, None] - fp) / n_neg[:, None]
        ok = spec >= specificity - 1e-12  # tolerance: 0.9 is not exact in binary
        best_tp = np.where(ok, tp, 0.0).max(axis=1, initial=0.0)
        return np.where((n_pos > 0) & (n_neg > 0), best_tp / n_pos, np.nan)


def _counts(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s, y = check_scores(scores, labels)
    uniq, group = score_groups(s)
    cpos, cneg = group_counts(group, y, uniq.size)
    return uniq, cpos, cneg


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Tie-aware ROC AUC (equals ``sklearn.metrics.roc_auc_score``); NaN if a class is absent."""
    _, cpos, cneg = _counts(scores, labels)
    return float(auc_from_counts(cpos, cneg)[0])


def average_precision(scores: np.ndarray, labels: np.ndarray) -> float:
    """Tie-aware step-wise AP (equals ``sklearn.metrics.average_precision_score``); NaN without positives."""
    _, cpos, cneg = _counts(scores, labels)
    return float(ap_from_counts(cpos, cneg)[0])


def sensitivity_at_specificity(scores: np.ndarray, labels: np.ndarray, specificity: float) -> float:
    """Best sensitivity at specificity >= ``specificity`` (no interpolation); NaN if a class is absent."""
    _, cpos, cneg = _counts(scores, labels)
    return float(sensitivity_at_specificity_from_counts(cpos, cneg, specificity)[0])


def best_f1(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(max F1, its threshold) over thresholds at the distinct scores (predict ``score >= t``).

    Among equal F1 the highest threshold wins. Chosen on the data given, hence optimistic when
    reported on the split it was chosen on. (NaN, NaN) without positives.
    """
    uniq, cpos, cneg = _counts(scores, labels)
    n_pos = cpos.sum()
    if n_pos == 0 or uniq.size == 0:
        return float("nan"), float("nan")
    tp = np.cumsum(cpos[0])
    fp = np.cumsum(cneg[0])
    f1 = 2 * tp / (tp + fp + n_pos)  # 2TP / (2TP + FP + FN)
    k = int(np.argmax(f1))
    return float(f1[k]), float(uniq[k])


def brier_score(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error between the score (a probability in [0,1]) and the 0/1 label."""
    s, y = check_scores(scores, labels)
    return float(np.mean((s - y) ** 2)) if s.size else float("nan")


def calibration_bins(scores: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Equal-width reliability bins on [0, 1].

    Bin b holds scores in [b/n, (b+1)/n), the last bin also holds 1.0. Returns ``edges`` [n+1],
    ``count`` [n], ``mean_score`` [n] and ``fraction_positive`` [n] (NaN for empty bins).
    """
    s, y = check_scores(scores, labels)
    b = np.clip(np.floor(s * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(b, weights=s, minlength=n_bins) / count
        frac_pos = np.bincount(b, weights=y.astype(np.float64), minlength=n_bins) / count
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count,
            "mean_score": mean_score, "fraction_positive": frac_pos}


def expected_calibration_error(scores: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE = sum_b (n_b / N) * |mean label in b - mean score in b| over non-empty equal-width bins."""
    bins = calibration_bins(scores, labels, n_bins)
    count = bins["count"]
    if count.sum() == 0:
        return float("nan")
    nz = count > 0
    gap = np.abs(bins["fraction_positive"][nz] - bins["mean_score"][nz])
    return float((count[nz] / count.sum() * gap).sum())


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """ROC operating points for plotting: ``fpr``, ``tpr`` [M+1] and ``thresholds`` [M+1].

    Points are "predict score >= t" for each distinct score t (descending), preceded by the
    "predict none" point (0, 0) with threshold +inf.
    """
    uniq, cpos, cneg = _counts(scores, labels)
    tp = np.concatenate([[0.0], np.cumsum(cpos[0])])
    fp = np.concatenate([[0.0], np.cumsum(cneg[0])])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"fpr": fp / fp[-1], "tpr": tp / tp[-1], "thresholds": np.concatenate([[np.inf], uniq])}


def precision_recall_curve(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """PR operating points for plotting: ``precision``, ``recall``, ``thresholds`` [M], one per
    distinct score (descending), predicting ``score >= t``. AP is the step-wise area under it.
    """
    uniq, cpos, cneg = _counts(scores, labels)
    tp = np.cumsum(cpos[0])
    fp = np.cumsum(cneg[0])
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"precision": tp / (tp + fp), "recall": tp / tp[-1] if tp.size else tp, "thresholds": uniq}


def presence_metrics(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, Any]:
    """Image-level presence metrics of scores (float [N], probabilities) against labels (0/1 [N]).

    Returns keys: roc_auc_presence, average_precision_presence, best_f1_presence,
    best_f1_threshold_presence (chosen on these data), precision_presence, recall_presence,
    specificity_presence, f1_presence, tp_presence, fp_presence, fn_presence, tn_presence
    (at ``score >= threshold``), sensitivity_at_spec90, sensitivity_at_spec95, brier_presence,
    ece_presence, num_positive_presence, num_negative_presence, prevalence_presence, and
    ``notes`` (list[str]). A metric that needs an absent class is NaN and a note says so.
    """
    s, y = check_scores(scores, labels)
    uniq, group = score_groups(s)
    cpos, cneg = group_counts(group, y, uniq.size)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    notes: list[str] = []
    if n_pos == 0:
        notes.append("no positive image: AUC, AP, best F1, recall and sensitivities are NaN")
    if n_neg == 0:
        notes.append("no negative image: AUC, specificity and sensitivities at fixed specificity are NaN")
    predicted = s >= float(threshold)
    tp = int((predicted & y).sum())
    fp = int((predicted & ~y).sum())
    fn, tn = n_pos - tp, n_neg - fp
    f1, f1_t = best_f1(s, y)
    out: dict[str, Any] = {
        "roc_auc_presence": float(auc_from_counts(cpos, cneg)[0]),
        "average_precision_presence": float(ap_from_counts(cpos, cneg)[0]),
        "best_f1_presence": f1,
        "best_f1_threshold_presence": f1_t,
        "precision_presence": _ratio(tp, tp + fp),
        "recall_presence": _ratio(tp, n_pos),
        "specificity_presence": _ratio(tn, n_neg),
        "f1_presence": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp_presence": tp,
        "fp_presence": fp,
        "fn_presence": fn,
        "tn_presence": tn,
    }
    for level in SPECIFICITY_LEVELS:
        key = f"sensitivity_at_spec{round(level * 100)}"
        out[key] = float(sensitivity_at_specificity_from_counts(cpos, cneg, level)[0])
    if s.size and (s.min() < 0.0 or s.max() > 1.0):
        notes.append("presence scores outside [0, 1] are not probabilities: brier_presence and ece_presence are NaN")
        out["brier_presence"] = out["ece_presence"] = float("nan")
    else:
        out["brier_presence"] = brier_score(s, y)
        out["ece_presence"] = expected_calibration_error(s, y)
    if n_pos and tp + fp == 0:
        notes.append(f"no image scored >= presence threshold {threshold}: precision_presence is NaN")
    out.update(num_positive_presence=n_pos, num_negative_presence=n_neg,
               prevalence_presence=_ratio(n_pos, n_pos + n_neg), notes=notes)
    return out
