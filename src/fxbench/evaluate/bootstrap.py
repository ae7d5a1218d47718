"""Seeded stratified bootstrap over images: confidence intervals and paired deltas.

Resampling unit: the image. Positives (label 1) and negatives are resampled separately, each
with replacement to its own count, so every resample has the split's prevalence (pROC's
stratified default). The interval is the percentile interval (2.5th, 97.5th percentiles of the
resampled statistic, numpy's linear interpolation).

Speed: the per-image table is computed once (:class:`~fxbench.evaluate.metrics.PerImageStats`);
a resample is a row of indices [B,N]. Segmentation metrics are weighted sums over that row.
Ranking metrics (AUC, AP, sensitivity at specificity) come from per-score-group counts [B,M]
built with one ``bincount``, the same code path as the point estimate, so ties are treated
identically. 2,000 resamples of 613 images take well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fxbench.errors import ConfigError, DataError
from fxbench.evaluate.metrics import (
    PerImageStats,
    ap_from_counts,
    auc_from_counts,
    score_groups,
    sensitivity_at_specificity_from_counts,
)

#: Metrics that get a ``<name>_ci95`` in every metrics JSON.
HEADLINE_METRICS: tuple[str, ...] = (
    "dice_pos",
    "iou_pos",
    "roc_auc_presence",
    "average_precision_presence",
    "sensitivity_at_spec90",
    "lesion_recall",
)
_SEGMENTATION = ("dice_pos", "iou_pos", "dice", "iou", "dice_pooled", "precision_pos", "recall_pos",
                 "empty_specificity")
_LESION = ("lesion_recall", "lesion_recall_iou10", "lesion_fp_per_image")
_PRESENCE = ("roc_auc_presence", "average_precision_presence", "sensitivity_at_spec90",
             "sensitivity_at_spec95", "brier_presence")
#: Every metric the bootstrap (and :func:`point_estimates`) can resample.
SUPPORTED_BOOTSTRAP_METRICS: tuple[str, ...] = _SEGMENTATION + _LESION + _PRESENCE


def stratified_indices(labels: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Bootstrap index matrix int64 [B,N]: per row, n_pos draws from the positives, then n_neg
    draws from the negatives (with replacement). Deterministic in (labels, B, seed).
    """
    y = np.asarray(labels).astype(bool).reshape(-1)
    if n_resamples < 1:
        raise ConfigError(f"bootstrap resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    parts = []
    for members in (np.flatnonzero(y), np.flatnonzero(~y)):
        if members.size:
            parts.append(members[rng.integers(0, members.size, size=(n_resamples, members.size))])
    if not parts:
        return np.zeros((n_resamples, 0), dtype=np.int64)
    return np.concatenate(parts, axis=1).astype(np.int64, copy=False)


def available_metrics(stats: PerImageStats, metrics: Sequence[str] | None = None) -> list[str]:
    """The metrics of ``metrics`` (default: the headline set) that ``stats`` can support."""
    wanted = list(HEADLINE_METRICS if metrics is None else metrics)
    out = []
    for name in wanted:
        if name in _LESION and not stats.has_lesions:
            continue
        if name in _PRESENCE and stats.presence is None:
            continue
        out.append(name)
    return out


def _check(stats: PerImageStats, metrics: Sequence[str]) -> None:
    unknown = [m for m in metrics if m not in SUPPORTED_BOOTSTRAP_METRICS]
    if unknown:
        raise ConfigError(f"cannot bootstrap {unknown}", f"supported: {', '.join(SUPPORTED_BOOTSTRAP_METRICS)}")
    if stats.presence is None and any(m in _PRESENCE for m in metrics):
        raise DataError("presence metrics requested but the per-image table has no presence scores")
    if not stats.has_lesions and any(m in _LESION for m in metrics):
        raise DataError("lesion metrics requested but lesions were not computed (lesions=False)")


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _metric_rows(stats: PerImageStats, idx: np.ndarray, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    """Each metric evaluated on each row of indices idx [B,N] -> dict name -> float64 [B].

    Written as weighted sums over the resampled rows, so the identity row reproduces the
    aggregate definitions of :mod:`fxbench.evaluate.metrics` exactly (tested).
    """
    _check(stats, metrics)
    b = idx.shape[0]
    out: dict[str, np.ndarray] = {}
    pos = stats.gt_positive[idx]
    need = set(metrics)
    if need & {"dice_pooled", "precision_pos", "recall_pos"}:
        tp = stats.inter[idx].sum(axis=1)
        pred = stats.pred_area[idx].sum(axis=1)
        gt = stats.gt_area[idx].sum(axis=1)
    if need & set(_PRESENCE):
        assert stats.presence is not None
        uniq, group = score_groups(stats.presence)
        m = uniq.size
        flat = group[idx] + (np.arange(b, dtype=np.int64) * m)[:, None]
        y = stats.labels[idx]
        cpos = np.bincount(flat[y], minlength=b * m).reshape(b, m).astype(np.float64)
        cneg = np.bincount(flat[~y], minlength=b * m).reshape(b, m).astype(np.float64)
    for name in metrics:
        if name in ("dice_pos", "iou_pos"):
            values = getattr(stats, name[:-4])[idx]
            out[name] = _div((values * pos).sum(axis=1), pos.sum(axis=1))
        elif name in ("dice", "iou"):
            values = getattr(stats, name)[idx]
            out[name] = values.mean(axis=1) if idx.shape[1] else np.full(b, np.nan)
        elif name == "dice_pooled":
            out[name] = _div(2 * tp, pred + gt)
        elif name == "precision_pos":
            out[name] = _div(tp, pred)
        elif name == "recall_pos":
            out[name] = _div(tp, gt)
        elif name == "empty_specificity":
            neg = ~pos
            out[name] = _div(((stats.pred_area[idx] == 0) & neg).sum(axis=1), neg.sum(axis=1))
        elif name == "lesion_recall":
            out[name] = _div(stats.n_hit[idx].sum(axis=1), stats.n_lesions[idx].sum(axis=1))
        elif name == "lesion_recall_iou10":
            out[name] = _div(stats.n_hit_iou10[idx].sum(axis=1), stats.n_lesions[idx].sum(axis=1))
        elif name == "lesion_fp_per_image":
            out[name] = _div(stats.n_fp[idx].sum(axis=1), np.full(b, idx.shape[1]))
        elif name == "roc_auc_presence":
            out[name] = auc_from_counts(cpos, cneg)
        elif name == "average_precision_presence":
            out[name] = ap_from_counts(cpos, cneg)
        elif name.startswith("sensitivity_at_spec"):
            level = int(name.removeprefix("sensitivity_at_spec")) / 100.0
            out[name] = sensitivity_at_specificity_from_counts(cpos, cneg, level)
        elif name == "brier_presence":
            assert stats.presence is not None
            err = (stats.presence - stats.labels) ** 2
            out[name] = err[idx].mean(axis=1) if idx.shape[1] else np.full(b, np.nan)
    return out


def point_estimates(stats: PerImageStats, metrics: Sequence[str] | None = None) -> dict[str, float]:
    """The metrics on the data as given (the identity resample); equal to the aggregate metrics."""
    names = available_metrics(stats, metrics)
    identity = np.arange(stats.n, dtype=np.int64)[None, :]
    return {k: float(v[0]) for k, v in _metric_rows(stats, identity, names).items()}


def bootstrap_distributions(
    stats: PerImageStats,
    n_resamples: int = 2000,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
    indices: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Resampled values of each metric: dict name -> float64 [B].

    ``indices`` [B,N] overrides the stratified draw (for custom or shared resamples).
    ``metrics`` defaults to the headline metrics that ``stats`` supports.
    """
    names = available_metrics(stats, metrics) if metrics is None else list(metrics)
    idx = stratified_indices(stats.labels, n_resamples, seed) if indices is None else np.asarray(indices)
    return _metric_rows(stats, idx, names)


def percentile_interval(values: np.ndarray, level: float = 0.95) -> list[float]:
    """[lo, hi] percentile interval of the finite values; [NaN, NaN] if none is finite."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.percentile(finite, [100 * alpha, 100 * (1 - alpha)])
    return [float(lo), float(hi)]


def bootstrap_ci(
    stats: PerImageStats,
    n_resamples: int = 2000,
    seed: int = 0,
    metrics: Sequence[str] | None = None,
) -> dict[str, list[float]]:
    """Percentile 95% intervals from a stratified bootstrap: ``{"<name>_ci95": [lo, hi]}``.

    ``metrics=None`` means :data:`HEADLINE_METRICS` minus those ``stats`` cannot support (no
    presence scores, lesions not computed). ``n_resamples=0`` returns ``{}`` (bootstrap off).
    A metric whose point estimate is NaN gets [NaN, NaN].
    """
    if n_resamples <= 0:
        return {}
    dist = bootstrap_distributions(stats, n_resamples, seed, metrics)
    point = point_estimates(stats, list(dist))
    out = {}
    for name, values in dist.items():
        ci = percentile_interval(values) if np.isfinite(point[name]) else [float("nan")] * 2
        out[f"{name}_ci95"] = ci
    return out


def check_paired(a: PerImageStats, b: PerImageStats) -> None:
    """Refuse tables that do not describe the same images with the same ground truth.

    Raises:
        DataError: different image ids (or order), labels or ground-truth masks.
    """
    if a.image_ids != b.image_ids:
        only_a = sorted(set(a.image_ids) - set(b.image_ids))
        only_b = sorted(set(b.image_ids) - set(a.image_ids))
        what = (f"{len(only_a)} ids only in A, {len(only_b)} only in B" if only_a or only_b
                else "the same ids in a different order")
        raise DataError(f"paired comparison needs the same images in the same order ({what})",
                        "compare predictions of the same split of the same prepared folder")
    if not np.array_equal(a.labels, b.labels):
        raise DataError(f"paired comparison: A and B disagree on {int((a.labels != b.labels).sum())} image labels")
    if not (np.array_equal(a.gt_positive, b.gt_positive) and np.array_equal(a.gt_area, b.gt_area)):
        raise DataError("paired comparison: A and B have different ground-truth masks",
                        "both must be scored against the same prepared masks at the same resolution")


def paired_draws(
    a: PerImageStats,
    b: PerImageStats,
    metrics: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[list[str], dict[str, float], dict[str, float], dict[str, np.ndarray]]:
    """The one paired resample: ``(names, point_a, point_b, delta)`` with ``delta[name]`` the
    resampled B - A [n_resamples], the same stratified image indices applied to A and B.

    Raises:
        DataError: the tables do not describe the same images (:func:`check_paired`).
    """
    check_paired(a, b)
    names = [m for m in available_metrics(a, metrics) if m in available_metrics(b, metrics)]
    idx = stratified_indices(a.labels, n_resamples, seed)
    da, db = _metric_rows(a, idx, names), _metric_rows(b, idx, names)
    return names, point_estimates(a, names), point_estimates(b, names), {n: db[n] - da[n] for n in names}


def paired_bootstrap_delta(
    a: PerImageStats,
    b: PerImageStats,
    metrics: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, Any]]:
    """Paired comparison of two prediction sets on the same images, as **A minus B** (the
    resamples of :func:`paired_draws`; :func:`fxbench.evaluate.paired.paired_bootstrap` gives
    B - A with a p-value).

    Returns ``{metric: {"a", "b", "delta", "delta_ci95": [lo, hi], "share_a_better"}}`` where
    ``share_a_better`` is the fraction of resamples with delta > 0 (for lower-is-better metrics
    such as brier_presence and lesion_fp_per_image, > 0 means A is worse). ``n_resamples`` >= 1.
    """
    names, pa, pb, b_minus_a = paired_draws(a, b, metrics, n_resamples, seed)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        delta = -b_minus_a[name]
        finite = delta[np.isfinite(delta)]
        out[name] = {
            "a": pa[name],
            "b": pb[name],
            "delta": pa[name] - pb[name],
            "delta_ci95": percentile_interval(delta),
            "share_a_better": float((finite > 0).mean()) if finite.size else float("nan"),
        }
    return out
