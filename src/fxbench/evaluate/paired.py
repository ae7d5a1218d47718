"""Paired tests of two prediction sets on the same images (pure numpy/scipy).

Everything here compares B with A on one image set and reports differences as **B - A**:

* :func:`paired_bootstrap` -- every bootstrap-able metric: the same stratified resample of
  images (:func:`~fxbench.evaluate.bootstrap.stratified_indices`) is applied to A and B, so
  per-image correlation cancels. 95% percentile CI of the difference and a two-sided p-value
  (definition in :func:`bootstrap_p_value`).
* :func:`delong_test` -- DeLong, DeLong & Clarke-Pearson (1988) test of two correlated ROC
  AUCs, with the tie-aware (Mann-Whitney) kernel the AUC itself uses.
* :func:`mcnemar_test` -- exact McNemar test on frozen image-level decisions (correct or not).
* :func:`holm_adjust` -- Holm (1979) step-down adjustment of a family of p-values.

Definitions in prose: docs/metrics.md, "Paired comparisons".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from fxbench.errors import DataError
from fxbench.evaluate.bootstrap import paired_draws, percentile_interval
from fxbench.evaluate.metrics import PerImageStats, check_scores

#: Metrics where a smaller value is better (a positive B - A means B is worse).
LOWER_IS_BETTER: frozenset[str] = frozenset({"brier_presence", "lesion_fp_per_image"})


def bootstrap_p_value(delta: np.ndarray) -> float:
    """Two-sided bootstrap p-value of "no difference" from resampled differences ``delta`` [B].

    p = min(1, 2 * min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1)) over the B finite resamples:
    twice the smaller tail share of the bootstrap distribution beyond 0, with the usual +1
    correction (Davison & Hinkley 1997, eq. 4.11) so that p is never 0. It inverts the
    percentile interval: p < 0.05 roughly when the 95% CI excludes 0. Resamples exactly at 0
    count on both sides (conservative for tied metrics). Identical A and B give p = 1. NaN
    when no resample is finite.
    """
    d = np.asarray(delta, dtype=np.float64)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan")
    low = 1 + int((d <= 0).sum())
    high = 1 + int((d >= 0).sum())
    return float(min(1.0, 2.0 * min(low, high) / (d.size + 1)))


@dataclass(frozen=True)
class PairedDelta:
    """One metric of a paired bootstrap: point values, difference B - A, CI and p-value."""

    a: float
    b: float
    delta: float
    delta_ci95: list[float]
    p_value: float
    n_resamples: int  # finite resamples used

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    a: PerImageStats,
    b: PerImageStats,
    metrics: Sequence[str] | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, PairedDelta]:
    """Paired stratified bootstrap of B - A for each metric both tables support.

    Resamples: :func:`~fxbench.evaluate.bootstrap.stratified_indices` on the labels (positives
    then negatives, with replacement, to their own counts), one index matrix [B,N] shared by A
    and B. Each resample is scored with the same code as the point estimates. The interval is
    the percentile interval of the resampled differences (finite ones); the p-value is
    :func:`bootstrap_p_value`. ``metrics=None`` means the headline metrics.

    Raises:
        DataError: the tables do not describe the same images (:func:`~fxbench.evaluate.bootstrap.check_paired`).
    """
    names, pa, pb, deltas = paired_draws(a, b, metrics, n_resamples, seed)
    out: dict[str, PairedDelta] = {}
    for name in names:
        delta = deltas[name]
        out[name] = PairedDelta(a=pa[name], b=pb[name], delta=pb[name] - pa[name],
                                delta_ci95=percentile_interval(delta), p_value=bootstrap_p_value(delta),
                                n_resamples=int(np.isfinite(delta).sum()))
    return out


# --------------------------------------------------------------------------------------
# DeLong


def _placements(scores: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components of one score vector.

    V10[i] (per positive i) = share of negatives j with s_i > s_j, ties counting 1/2;
    V01[j] (per negative j) = share of positives i with s_i > s_j, ties counting 1/2.
    Computed from mid-ranks (Sun & Xu 2014): O(N log N), no m x n matrix.
    """
    pos, neg = scores[y], scores[~y]
    m, n = pos.size, neg.size
    r_all = sps.rankdata(scores)
    r_pos, r_neg = sps.rankdata(pos), sps.rankdata(neg)
    v10 = (r_all[y] - r_pos) / n
    v01 = 1.0 - (r_all[~y] - r_neg) / m
    return float(v10.mean()), v10, v01


@dataclass(frozen=True)
class DeLongResult:
    """DeLong test of AUC_B - AUC_A on the same images (variances in AUC units squared)."""

    auc_a: float
    auc_b: float
    delta: float
    var_a: float
    var_b: float
    covariance: float
    se_delta: float
    z: float
    p_value: float
    delta_ci95: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def delong_test(scores_a: np.ndarray, scores_b: np.ndarray, labels: np.ndarray) -> DeLongResult:
    """DeLong's test for the difference of two paired ROC AUCs.

    With m positives and n negatives, and structural components V10 [m], V01 [n] of each model
    (see :func:`_placements`): S10 and S01 are the 2x2 sample covariance matrices (ddof=1) of
    (V10_A, V10_B) and (V01_A, V01_B); Var = S10 / m + S01 / n. Then
    se = sqrt(Var_AA + Var_BB - 2 Var_AB), z = (AUC_B - AUC_A) / se, p = 2 (1 - Phi(|z|)), and
    the CI is delta +- 1.96 se (normal approximation). When se = 0 (identical rankings of the
    pairs), p = 1 if delta = 0 (else 0). NaN everywhere when a class has fewer than 2 images.
    """
    sa, y = check_scores(scores_a, labels)
    sb, _ = check_scores(scores_b, labels)
    if sa.shape != sb.shape:
        raise DataError(f"DeLong: {sa.size} scores for A but {sb.size} for B")
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        nan = float("nan")
        return DeLongResult(nan, nan, nan, nan, nan, nan, nan, nan, nan, [nan, nan])
    auc_a, v10a, v01a = _placements(sa, y)
    auc_b, v10b, v01b = _placements(sb, y)
    s10 = np.cov(np.vstack([v10a, v10b]), ddof=1)
    s01 = np.cov(np.vstack([v01a, v01b]), ddof=1)
    var = s10 / m + s01 / n
    delta = auc_b - auc_a
    v = float(var[0, 0] + var[1, 1] - 2 * var[0, 1])
    se = float(np.sqrt(max(v, 0.0)))
    if se <= 1e-15:
        z = 0.0 if abs(delta) <= 1e-15 else float(np.sign(delta) * np.inf)
        p = 1.0 if abs(delta) <= 1e-15 else 0.0
    else:
        z = delta / se
        p = float(2.0 * sps.norm.sf(abs(z)))
    half = float(sps.norm.ppf(0.975)) * se
    return DeLongResult(auc_a=auc_a, auc_b=auc_b, delta=delta, var_a=float(var[0, 0]), var_b=float(var[1, 1]),
                        covariance=float(var[0, 1]), se_delta=se, z=float(z), p_value=min(1.0, p),
                        delta_ci95=[delta - half, delta + half])


# --------------------------------------------------------------------------------------
# McNemar


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test on paired correct/incorrect image decisions."""

    n: int
    accuracy_a: float
    accuracy_b: float
    delta: float  # accuracy_b - accuracy_a
    a_only_correct: int  # A right, B wrong
    b_only_correct: int  # B right, A wrong
    p_value: float
    method: str = "exact binomial (two-sided, conditional on the discordant pairs)"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_test(decisions_a: np.ndarray, decisions_b: np.ndarray, labels: np.ndarray) -> McNemarResult:
    """McNemar's test of frozen image-level decisions (bool [N]: predicted fractured) vs labels.

    With b01 = #(A right, B wrong) and b10 = #(B right, A wrong), the exact test is the
    two-sided binomial test of min(b01, b10) successes in b01 + b10 trials at p = 1/2:
    p = min(1, 2 * P[X <= min(b01, b10)]), X ~ Bin(b01 + b10, 1/2) (scipy's ``binomtest``,
    which is this for p = 1/2). Exact for every count, so no chi-square approximation is
    needed; no discordant pair gives p = 1.
    """
    ya = np.asarray(decisions_a).astype(bool).reshape(-1)
    yb = np.asarray(decisions_b).astype(bool).reshape(-1)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if not ya.shape == yb.shape == y.shape:
        raise DataError(f"McNemar: {ya.size} decisions for A, {yb.size} for B, {y.size} labels")
    ra, rb = ya == y, yb == y
    b01 = int((ra & ~rb).sum())
    b10 = int((rb & ~ra).sum())
    p = 1.0 if b01 + b10 == 0 else float(sps.binomtest(min(b01, b10), b01 + b10, 0.5).pvalue)
    n = int(y.size)
    acc_a = float(ra.mean()) if n else float("nan")
    acc_b = float(rb.mean()) if n else float("nan")
    return McNemarResult(n=n, accuracy_a=acc_a, accuracy_b=acc_b, delta=acc_b - acc_a,
                         a_only_correct=b01, b_only_correct=b10, p_value=min(1.0, p))


# --------------------------------------------------------------------------------------
# Holm


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values, in the input order.

    Sorted ascending p_(1) <= ... <= p_(k) over the finite values (k of them):
    adj_(i) = max_{j <= i} min(1, (k - j + 1) p_(j)). NaN inputs stay NaN and do not count in k.
    Rejecting adj <= alpha controls the family-wise error rate at alpha.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    k = ok.size
    if k == 0:
        return out.tolist()
    order = ok[np.argsort(p[ok], kind="stable")]
    scaled = np.minimum(1.0, (k - np.arange(k)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return [float(v) for v in out]
