"""``fxbench tune``: choose the operating point on val from the saved predictions only.

What is chosen, and how:

* **Pixel threshold** (grid 0.05..0.95 step 0.05 by default, the seed's grid) and optionally a
  **minimum component size**: the grid point with the strictly highest selection metric wins
  (first in grid order on ties: lower threshold, then smaller min_component), as in the seed.
* **Presence source**: among the sources the artifact holds (``head``, ``max``, ``topk_mean``,
  ``mean``...) and ``pred_area`` (the share of pixels >= the chosen pixel threshold, the seed's
  mode), the one with the highest val ROC AUC (ties: higher AP, then the order head, max,
  topk_mean, mean, pred_area). Stored sources are threshold-free, so they are chosen before
  their threshold; pred_area is scored at the chosen pixel operating point.
* **Presence threshold**: by default the score that maximises **F1** on val (``presence_rule
  = "f1"``), because presence is reported with precision/recall at that threshold and F1 is the
  seed's image-level summary; ``"youden"`` (max TPR - FPR) is available for a prevalence-free
  operating point. Either way it is frozen with the rest and never re-chosen on test.

Selection metrics: ``dice_pos`` (default), ``iou_pos``, ``dice``, ``iou`` and
``auc_plus_dice_pos``. Pixel and presence parameters are separable for the stored sources
(they do not depend on the pixel threshold), so ``auc_plus_dice_pos`` is maximised by the best
pixel grid point plus the best presence source; with ``pred_area`` a candidate, each grid point
is scored with its own pred_area AUC. The value is reported as the sum.

Speed: the whole threshold grid is scored from one pass over the pixels. Each fp16 probability
is mapped to its grid bin with a lookup table, per-image histograms of all pixels and of
ground-truth pixels give |P_i(t)| and |P_i(t) & G_i| for every t at once, and
``fxbench.evaluate.metrics`` (``dice_iou``, ``aggregate_segmentation``) turns those counts into
metrics, so no definition is repeated here. Grid points with ``min_component > 0`` need connected
components and go through :func:`fxbench.evaluate.metrics.segmentation_metrics` itself. The
chosen point is always re-scored by ``fxbench.evaluate`` and must agree with the grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fxbench.artifacts.decision import (
    DECISION_FILE,
    Decision,
    run_identity,
    write_decision,
    write_tune_record,
)
from fxbench.errors import DataError, ProtocolError, UsageError
from fxbench.io import write_csv_atomic

if TYPE_CHECKING:
    from fxbench.artifacts.predictions import Predictions

#: Selection metrics ``tune`` accepts.
TUNE_METRICS = ("dice_pos", "iou_pos", "dice", "iou", "auc_plus_dice_pos")
#: Rules for the presence threshold.
PRESENCE_RULES = ("f1", "youden")
#: Pixel metrics computed for every grid point (names follow fxbench.evaluate).
GRID_METRICS = ("dice_pos", "iou_pos", "dice", "iou", "precision_pos", "recall_pos", "empty_specificity")
#: Pixels per chunk when histogramming (bounds peak memory to a few tens of MB).
_CHUNK_PIXELS = 1 << 22


# --------------------------------------------------------------------------------------
# grids


def threshold_grid(start: float = 0.05, stop: float = 0.95, step: float = 0.05) -> np.ndarray:
    """The seed's grid: start, start+step, ... <= stop, each rounded to 6 decimals.

    Raises:
        UsageError: start/stop outside (0, 1), stop < start or step <= 0.
    """
    if not (0.0 < start < 1.0 and 0.0 < stop < 1.0):
        raise UsageError(f"threshold grid bounds must lie in (0, 1), got start={start} stop={stop}")
    if stop < start or step <= 0:
        raise UsageError(f"threshold grid needs stop >= start and step > 0 (start={start} stop={stop} step={step})")
    n = int(math.floor((stop - start) / step + 1e-9)) + 1
    return np.round(start + step * np.arange(n), 6)


def unit_grid(step: float) -> np.ndarray:
    """0, step, ..., 1 (inclusive), rounded to 6 decimals: weights for blends."""
    if not 0.0 < step <= 1.0:
        raise UsageError(f"weight grid step must lie in (0, 1], got {step}")
    n = int(math.floor(1.0 / step + 1e-9))
    grid = np.round(step * np.arange(n + 1), 6)
    return grid if grid[-1] == 1.0 else np.append(grid, 1.0)


# --------------------------------------------------------------------------------------
# pixel counts for a whole threshold grid in one pass


def _fp16_bin_lut(thresholds: np.ndarray) -> np.ndarray:
    """uint8[65536]: for each float16 bit pattern, how many thresholds t satisfy value >= t.

    Comparing through the float64 value of each fp16 pattern gives exactly the result of
    ``probs >= t`` on the stored float16 probabilities. NaN compares false everywhere.
    """
    values = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float64)
    lut = np.searchsorted(np.asarray(thresholds, dtype=np.float64), values, side="right")
    lut[np.isnan(values)] = 0
    return lut.astype(np.uint8)


def threshold_counts(
    probs: np.ndarray, masks: np.ndarray, thresholds: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image pixel counts at every threshold, from one pass over the pixels.

    Args:
        probs: [N,S,S] probabilities (converted to float16, the artifact's precision).
        masks: [N,S,S] ground truth (non-zero = fracture).
        thresholds: K ascending thresholds (K <= 254).

    Returns:
        pred [N,K] = |{prob >= t_k}|, inter [N,K] = |{prob >= t_k} & GT|, gt [N] = |GT|; int64.
    """
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.ndim != 1 or len(thr) == 0 or len(thr) > 254 or np.any(np.diff(thr) <= 0):
        raise UsageError("thresholds must be 1..254 strictly ascending values")
    k = len(thr)
    probs16 = np.ascontiguousarray(np.asarray(probs, dtype=np.float16))
    n = probs16.shape[0]
    flat_p = probs16.reshape(n, -1).view(np.uint16)
    flat_g = np.asarray(masks).reshape(n, -1)
    lut = _fp16_bin_lut(thr)
    pred = np.zeros((n, k), dtype=np.int64)
    inter = np.zeros((n, k), dtype=np.int64)
    gt = np.count_nonzero(flat_g, axis=1).astype(np.int64)
    per_image = max(1, flat_p.shape[1])
    chunk = max(1, _CHUNK_PIXELS // per_image)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        bins = lut[flat_p[lo:hi]].astype(np.int32)  # [c, S*S], value = number of t below prob
        bins += (np.arange(hi - lo, dtype=np.int32) * (k + 1))[:, None]
        hist_all = np.bincount(bins.ravel(), minlength=(hi - lo) * (k + 1)).reshape(hi - lo, k + 1)
        on_gt = flat_g[lo:hi] != 0
        hist_gt = np.bincount(bins[on_gt], minlength=(hi - lo) * (k + 1)).reshape(hi - lo, k + 1)
        # pixels with prob >= t_k are those whose bin value is > k: a reversed cumulative sum.
        pred[lo:hi] = np.cumsum(hist_all[:, ::-1], axis=1)[:, ::-1][:, 1:]
        inter[lo:hi] = np.cumsum(hist_gt[:, ::-1], axis=1)[:, ::-1][:, 1:]
    return pred, inter, gt


def seg_metrics_from_counts(
    pred: np.ndarray, inter: np.ndarray, gt: np.ndarray, image_ids: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Aggregate pixel metrics for each of K thresholds from [N,K] counts (``gt`` is [N]).

    The per-image Dice/IoU and the aggregates come from :mod:`fxbench.evaluate.metrics`
    (``dice_iou`` and ``aggregate_segmentation``), so tune uses the evaluated definitions
    verbatim; only the pixel counting is done here, once for the whole grid. Lesion metrics
    are not computed (they need components and do not enter any selection metric).
    """
    from fxbench.evaluate.metrics import PerImageStats, aggregate_segmentation, dice_iou

    n, k = pred.shape
    ids = list(image_ids) if image_ids is not None else [str(i) for i in range(n)]
    zeros = np.zeros(n, dtype=np.int64)
    gt = np.asarray(gt, dtype=np.int64)
    out = []
    for j in range(k):  # K aggregates of N-vectors: cheap next to the pixel pass
        dice, iou = dice_iou(inter[:, j], pred[:, j], gt)
        stats = PerImageStats(
            image_ids=ids, gt_positive=gt > 0, inter=inter[:, j], pred_area=pred[:, j], gt_area=gt,
            dice=dice, iou=iou, n_lesions=zeros, n_hit=zeros, n_hit_iou10=zeros, n_pred=zeros,
            n_fp=zeros, has_lesions=False,
        )
        agg = aggregate_segmentation(stats)
        out.append({key: _num(agg.get(key)) for key in GRID_METRICS})
    return out


def seg_grid(
    probs: np.ndarray,
    masks: np.ndarray,
    thresholds: Sequence[float] | np.ndarray,
    min_components: Sequence[int] = (0,),
) -> list[dict[str, Any]]:
    """Pixel metrics at every (threshold, min_component); rows in grid order.

    ``min_component == 0`` rows come from :func:`threshold_counts` (one pass); others call
    ``fxbench.evaluate.metrics.segmentation_metrics`` per grid point.
    """
    thr = [float(t) for t in thresholds]
    rows: list[dict[str, Any]] = []
    fast: list[dict[str, Any]] = []
    if 0 in min_components:
        fast = seg_metrics_from_counts(*threshold_counts(probs, masks, thr))
    slow_mcs = sorted({int(m) for m in min_components if int(m) > 0})
    if slow_mcs:
        from fxbench.evaluate.metrics import segmentation_metrics
    for ti, t in enumerate(thr):
        if fast:
            rows.append({"threshold": t, "min_component": 0, **fast[ti]})
        for mc in slow_mcs:
            m = segmentation_metrics(probs, masks, t, min_component=mc, lesions=False)
            rows.append({"threshold": t, "min_component": mc, **{k: _num(m.get(k)) for k in GRID_METRICS}})
    return rows


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _key(v: float) -> float:
    """NaN never wins a selection (the one NaN policy of fxbench.evaluate.rules)."""
    from fxbench.evaluate.rules import selection_key

    return selection_key(v)


# --------------------------------------------------------------------------------------
# presence


def choose_presence_threshold(scores: np.ndarray, labels: np.ndarray, rule: str = "f1") -> tuple[float, float]:
    """Presence threshold maximising ``rule`` on these (val) scores; returns (threshold, value).

    The image is called positive when ``score >= threshold``; the threshold is one of the scores
    and, among equal values, the highest such score. ``f1`` uses ``evaluate.metrics.best_f1``;
    ``youden`` maximises TPR - FPR over ``evaluate.metrics.roc_curve``. One class absent ->
    (0.5, nan): nothing can be chosen, so the conventional midpoint is recorded.
    """
    from fxbench.evaluate.metrics import best_f1, roc_curve

    if rule not in PRESENCE_RULES:
        raise UsageError(f"unknown presence rule '{rule}'", f"use one of: {', '.join(PRESENCE_RULES)}")
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return 0.5, float("nan")
    if rule == "f1":
        value, thr = best_f1(scores, y)
        return float(thr), float(value)
    curve = roc_curve(scores, y)
    j = curve["tpr"][1:] - curve["fpr"][1:]  # drop the "predict none" point (threshold +inf)
    best = int(np.argmax(j))  # first max = highest threshold (thresholds are descending)
    return float(curve["thresholds"][1:][best]), float(j[best])


def _source_order(sources: Sequence[str]) -> list[str]:
    from fxbench.evaluate.rules import presence_order

    return presence_order(sources)


def presence_table(
    pred: Predictions, sources: Sequence[str] | None = None, rule: str = "f1"
) -> list[dict[str, Any]]:
    """One row per presence source: val AUC, AP (from fxbench.evaluate) and the chosen threshold."""
    from fxbench.evaluate.metrics import presence_metrics

    avail = list(pred.presence)
    wanted = avail if sources is None else list(sources)
    missing = [s for s in wanted if s not in avail]
    if missing:
        raise DataError(
            f"presence source(s) {missing} not in the predictions (has: {', '.join(avail) or 'none'})"
        )
    rows = []
    for source in _source_order(wanted):
        scores = pred.presence[source]
        t, value = choose_presence_threshold(scores, pred.labels, rule)
        m = presence_metrics(scores, pred.labels, t)  # AUC/AP do not depend on t
        rows.append(
            {
                "presence_source": source,
                "roc_auc_presence": _num(m.get("roc_auc_presence")),
                "average_precision_presence": _num(m.get("average_precision_presence")),
                "presence_threshold": t,
                f"{rule}_at_threshold": value,
            }
        )
    return rows


def best_presence(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The row with the highest AUC, then AP; the first such row in source order."""
    if not rows:
        raise DataError("the predictions artifact has no presence scores", "re-run `fxbench eval`")
    return max(rows, key=lambda r: (_key(r["roc_auc_presence"]), _key(r["average_precision_presence"])))


# --------------------------------------------------------------------------------------
# tune


@dataclass
class TuneResult:
    """What ``tune`` chose and the evidence: the decision, the pixel grid and the presence table."""

    decision: Decision
    grid: list[dict[str, Any]]
    presence: list[dict[str, Any]]
    best: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)


def _check_metric(metric: str) -> None:
    if metric not in TUNE_METRICS:
        import difflib

        close = difflib.get_close_matches(metric, TUNE_METRICS, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise UsageError(f"unknown selection metric '{metric}'", f"{hint}valid: {', '.join(TUNE_METRICS)}")


def select_grid_row(grid: list[dict[str, Any]], metric: str, presence: dict[str, Any] | None = None) -> dict[str, Any]:
    """First grid row with the strictly highest selection metric (the seed's tie rule).

    A composite metric (``auc_plus_dice_pos``) is computed per row by
    :func:`fxbench.evaluate.rules.metric_value` from the row plus ``presence`` (the chosen
    presence row: its AUC does not depend on the pixel grid). NaN never wins. The result
    carries ``tied``: every (threshold, min_component) that shares the best score.
    """
    from fxbench.evaluate.rules import metric_value

    extra = presence or {}
    scored = [(row, metric_value(metric, {**extra, **row})) for row in grid]
    best: dict[str, Any] | None = None
    best_score = math.nan
    best_key = -math.inf
    for row, score in scored:
        k = _key(score)
        if best is None or k > best_key:
            best, best_score, best_key = row, score, k
    assert best is not None
    tied = [
        {"threshold": float(r["threshold"]), "min_component": int(r["min_component"])}
        for r, score in scored
        if not math.isnan(best_score) and not math.isnan(score) and math.isclose(score, best_score, rel_tol=0, abs_tol=1e-12)
    ]
    return {**best, "selection_metric": metric, "selection_score": best_score, "tied": tied}


def tuning_warnings(grid: list[dict[str, Any]], best: dict[str, Any]) -> dict[str, Any]:
    """Ties and degenerate tuning, for the tune output and decision.json.

    ``ties``: the grid points sharing the best score (listed when more than one; the first in
    grid order was taken). ``degenerate``: reasons the choice carries little information --
    recall_pos 1.0 at every grid point (the model marks every lesion pixel even at t=0.95), an
    empty_specificity near 0 at the chosen point (almost every fracture-free image gets a
    predicted fracture), or a selection score undefined (NaN) everywhere.
    """
    ties = best.get("tied") or []
    reasons = []
    recalls = [_num(r.get("recall_pos")) for r in grid]
    if recalls and all(v >= 1.0 - 1e-12 for v in recalls):
        reasons.append("recall_pos is 1.0 at every grid point")
    spec = _num(best.get("empty_specificity"))
    if not math.isnan(spec) and spec <= 0.05:
        reasons.append(f"empty_specificity {spec:.3f} at the chosen point (near 0)")
    if math.isnan(_num(best.get("selection_score"))):
        reasons.append("the selection metric is undefined (NaN) at every grid point")
    return {"ties": ties if len(ties) > 1 else [], "degenerate": reasons}


def tune_predictions(
    pred: Predictions,
    *,
    val_sha256: str | None,
    metric: str = "dice_pos",
    thresholds: Sequence[float] | None = None,
    min_components: Sequence[int] = (0,),
    presence_sources: Sequence[str] | None = None,
    presence_rule: str = "f1",
    extra: dict[str, Any] | None = None,
) -> TuneResult:
    """Choose threshold, min_component, presence source and presence threshold on ``pred`` (val).

    Raises:
        ProtocolError: ``pred`` says it holds another split than val.
        DataError: val has no fracture-positive image (nothing to tune on).
    """
    _check_metric(metric)
    split = pred.meta.get("split")
    if split not in (None, "val"):
        raise ProtocolError(f"tune chooses on val only; these predictions are for '{split}'", "pass val predictions")
    if not np.any(pred.masks.reshape(pred.n, -1).any(axis=1)):
        raise DataError("val has no image with a fracture mask; nothing to tune on")
    thr = threshold_grid() if thresholds is None else np.asarray(thresholds, dtype=np.float64)
    mcs = sorted({int(m) for m in min_components}) or [0]
    if any(m < 0 for m in mcs):
        raise UsageError("--min-component values must be >= 0")
    grid = seg_grid(pred.probs, pred.masks, thr, mcs)
    best, pres_rows = _choose_point(pred, grid, metric, presence_sources, presence_rule)
    pres = best_presence(pres_rows)
    warnings = tuning_warnings(grid, best)
    decision = Decision(
        threshold=float(best["threshold"]),
        presence_source=pres["presence_source"],
        presence_threshold=float(pres["presence_threshold"]),
        min_component=int(best["min_component"]),
        tta=pred.meta.get("tta"),
        selected_on="val",
        selection_metric=metric,
        presence_rule=presence_rule,
        val_predictions_sha256=val_sha256,
        source="tune",
        checkpoint=pred.meta.get("checkpoint"),
        checkpoint_sha256=pred.meta.get("checkpoint_sha256"),
        val_score=float(best["selection_score"]),
        ties=warnings["ties"],
        degenerate=warnings["degenerate"],
        **(extra or {}),
    )
    check_against_evaluate(pred, decision, best)
    return TuneResult(decision=decision, grid=grid, presence=pres_rows, best=best)


def _choose_point(
    pred: Predictions, grid: list[dict[str, Any]], metric: str, sources: Sequence[str] | None, rule: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The grid row and the presence table (the best source is then :func:`best_presence`).

    Stored sources are threshold-free. ``pred_area`` (a candidate unless ``sources`` leaves it
    out) is scored at the chosen row's threshold and min_component; for ``auc_plus_dice_pos``
    every row is tried with its own pred_area, since only then does presence depend on the row.
    """
    from fxbench.evaluate.presence import DERIVED_PRESENCE, with_derived_presence

    wants_area = sources is None or "pred_area" in sources
    fixed = None if sources is None else [s for s in sources if s not in DERIVED_PRESENCE]
    fixed_rows = presence_table(pred, fixed, rule) if fixed is None or fixed else []

    def area_rows(row: dict[str, Any]) -> list[dict[str, Any]]:
        derived = with_derived_presence(pred, float(row["threshold"]), int(row["min_component"]))
        return presence_table(derived, ["pred_area"], rule)

    if metric != "auc_plus_dice_pos":
        best = select_grid_row(grid, metric)
        return best, fixed_rows + (area_rows(best) if wants_area else [])
    if not wants_area:
        return select_grid_row(grid, metric, presence=best_presence(fixed_rows)), fixed_rows
    from fxbench.evaluate.rules import metric_value

    scored = []
    for row in grid:  # presence now depends on the row: score each row with its own pred_area
        rows = fixed_rows + area_rows(row)
        scored.append((row, rows, metric_value(metric, {**best_presence(rows), **row})))
    best_row, best_rows, best_score = scored[0]
    for row, rows, score in scored[1:]:
        if _key(score) > _key(best_score):
            best_row, best_rows, best_score = row, rows, score
    tied = [
        {"threshold": float(r["threshold"]), "min_component": int(r["min_component"])}
        for r, _, score in scored
        if not math.isnan(best_score) and not math.isnan(score) and math.isclose(score, best_score, rel_tol=0, abs_tol=1e-12)
    ]
    return {**best_row, "selection_metric": metric, "selection_score": best_score, "tied": tied}, best_rows


def check_against_evaluate(pred: Predictions, decision: Decision, best: dict[str, Any]) -> None:
    """The grid must agree with fxbench.evaluate at the chosen point (one source of truth)."""
    from fxbench.evaluate.metrics import segmentation_metrics

    m = segmentation_metrics(
        pred.probs, pred.masks, decision.threshold, min_component=decision.min_component, lesions=False
    )
    ref, got = _num(m.get("dice_pos")), float(best["dice_pos"])
    if not (math.isclose(ref, got, rel_tol=1e-6, abs_tol=1e-9) or (math.isnan(ref) and math.isnan(got))):
        raise RuntimeError(
            f"internal: tune grid dice_pos {got} != fxbench.evaluate {ref} at threshold {decision.threshold}"
        )


def write_tune_outputs(out_dir: Path, result: TuneResult) -> dict[str, str]:
    """Write decision.json, tune/record.json and tune/{grid,presence}.csv into ``out_dir``.

    The decision gets the folder's identity (:func:`run_identity`, unless it has one) and its
    content digest; the record names that digest, so the seal can verify the decision later.
    ``result.decision`` is replaced by the sealed decision. Returns the paths.
    """
    out_dir = Path(out_dir)
    decision = result.decision
    if decision.run is None:
        decision = decision.model_copy(update={"run": run_identity(out_dir)})
    result.decision = decision.sealed()
    decision_path = write_decision(out_dir / DECISION_FILE, result.decision)
    record_path = write_tune_record(out_dir, result.decision)
    grid_path = out_dir / "tune" / "grid.csv"
    write_csv_atomic(grid_path, result.grid, ["threshold", "min_component", *GRID_METRICS])
    pres_path = out_dir / "tune" / "presence.csv"
    if result.presence:
        write_csv_atomic(pres_path, result.presence, list(result.presence[0]))
    files = {"decision": str(decision_path), "record": str(record_path), "grid": str(grid_path),
             "presence": str(pres_path)}
    result.files = files
    return files


def tune_run(
    run_dir: str | Path,
    split: str = "val",
    *,
    metric: str = "dice_pos",
    thresholds: Sequence[float] | None = None,
    min_components: Sequence[int] = (0,),
    presence_sources: Sequence[str] | None = None,
    presence_rule: str = "f1",
) -> TuneResult:
    """Tune ``RUN`` on ``RUN/predictions/val.npz`` and write ``RUN/decision.json``.

    Raises:
        ProtocolError: ``split`` is not val (exit 4).
        DataError: the val predictions are missing or invalid.
    """
    if split != "val":
        raise ProtocolError(
            f"tune chooses on val only, not '{split}': the test split is sealed",
            "run `fxbench tune RUN` (val), then `fxbench eval RUN --split test --decision RUN/decision.json`",
        )
    _check_metric(metric)
    from fxbench.artifacts.predictions import load_predictions, predictions_sha256

    run_dir = Path(run_dir)
    path = run_dir / "predictions" / "val.npz"
    sha = predictions_sha256(path)
    pred = load_predictions(path)
    from fxbench.select.seal import check_run_artifact

    check_run_artifact(run_dir, "val", pred, path)  # a test artifact copied over val.npz is refused
    result = tune_predictions(
        pred,
        val_sha256=sha,
        metric=metric,
        thresholds=thresholds,
        min_components=min_components,
        presence_sources=presence_sources,
        presence_rule=presence_rule,
    )
    box = choose_box_score(pred, result.decision)
    if box is not None:
        result.decision = result.decision.model_copy(update=box)
    write_tune_outputs(run_dir, result)
    return result


def choose_box_score(pred: Predictions, decision: Decision) -> dict[str, Any] | None:
    """The box score (``max`` or ``mean`` probability of a component) with the higher val box
    AP50 at the chosen operating point; ties keep ``max``. None when the prepared folder of the
    predictions has no ``boxes.json`` or val has no box.

    Returns ``{"box_score": ..., "box_score_val_ap50": {"max": ap, "mean": ap}}`` for the decision.
    """
    from fxbench.data.boxes import read_gt_boxes
    from fxbench.evaluate.boxes import BOX_SCORES, box_point_estimates, prediction_box_matches

    prepared = pred.meta.get("prepared")
    gt = read_gt_boxes(prepared) if prepared and Path(prepared).is_dir() else None
    if gt is None or not any(len(gt.get(i, ())) for i in pred.image_ids):
        return None
    ap = {s: box_point_estimates(prediction_box_matches(pred, decision.to_dict(), gt, s))["box_ap50"] for s in BOX_SCORES}
    best = max(BOX_SCORES, key=lambda s: (_num(ap[s]) if not math.isnan(_num(ap[s])) else -1.0, s == "max"))
    return {"box_score": best, "box_score_val_ap50": {s: _num(v) for s, v in ap.items()}}
