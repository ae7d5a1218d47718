"""Score a predictions artifact under a decision: the body of ``RUN/metrics/<split>.json``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fxbench.artifacts.predictions import Predictions
from fxbench.errors import ConfigError, DataError
from fxbench.evaluate.bootstrap import HEADLINE_METRICS, available_metrics, bootstrap_ci
from fxbench.evaluate.metrics import (
    DEFINITIONS_VERSION,
    ECE_BINS,
    LESION_IOU_MIN,
    PerImageStats,
    aggregate_segmentation,
    ap_from_counts,
    auc_from_counts,
    group_counts,
    per_image_segmentation,
    presence_metrics,
    remove_small_components,
    score_groups,
    stats_from_binary,
    threshold_probs,
)
from fxbench.evaluate.native import to_native
from fxbench.evaluate.presence import with_derived_presence
from fxbench.evaluate.rules import resolve_presence_source
from fxbench.evaluate.subgroups import subgroup_table

Resolution = Literal["cache", "native"]
#: image_id -> native ground-truth mask (uint8 [H,W], non-zero = fracture).
NativeMaskLoader = Callable[[str], np.ndarray]


@dataclass(frozen=True)
class DecisionView:
    """The operating point read from a decision (file dict, pydantic model or dataclass)."""

    threshold: float
    presence_source: str = "auto"
    presence_threshold: float = 0.5
    min_component: int = 0
    source: str | None = None  # "tune", "user-fixed", ...
    selected_on: str | None = None  # split the values were chosen on, e.g. "val"

    @property
    def threshold_source(self) -> str:
        where = f", selected on {self.selected_on}" if self.selected_on else ""
        return f"{self.source or 'unspecified'}{where}"


def _get(decision: Any, key: str, default: Any) -> Any:
    if isinstance(decision, Mapping):
        return decision.get(key, default)
    return getattr(decision, key, default)


def resolve_decision(decision: Any) -> DecisionView:
    """Read threshold, presence_source, presence_threshold, min_component, source, selected_on
    from a mapping (decision.json) or an object with those attributes. Only threshold is required.

    Raises:
        ConfigError: missing threshold or an out-of-range value.
    """
    if isinstance(decision, DecisionView):
        return decision
    threshold = _get(decision, "threshold", None)
    if threshold is None:
        raise ConfigError("decision has no 'threshold'", "run `fxbench tune RUN` or pass --threshold")
    try:
        view = DecisionView(
            threshold=float(threshold),
            presence_source=str(_get(decision, "presence_source", "auto") or "auto"),
            presence_threshold=float(_get(decision, "presence_threshold", 0.5)),
            min_component=int(_get(decision, "min_component", 0) or 0),
            source=_get(decision, "source", None),
            selected_on=_get(decision, "selected_on", None),
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(f"decision has a malformed value: {err}") from err
    if not 0.0 <= view.threshold <= 1.0:
        raise ConfigError(f"decision threshold must be in [0, 1], got {view.threshold}")
    if view.min_component < 0:
        raise ConfigError(f"decision min_component must be >= 0, got {view.min_component}")
    return view


def native_prob(pred: Predictions, view: DecisionView, i: int) -> np.ndarray:
    """Image ``i``'s probability map in its native frame, float32 [H,W], with the decision's
    small components removed."""
    return to_native(cache_prob(pred, view, i), pred.boxes[i], pred.native_hw[i])


def cache_prob(pred: Predictions, view: DecisionView, i: int) -> np.ndarray:
    """Image ``i``'s cache map [S,S] with components below the decision's ``min_component`` set to 0."""
    prob = pred.probs[i]
    if view.min_component > 1:
        # min_component is defined in cache pixels, so the same decision means the same thing
        # at both resolutions: remove small components in the cache map (set them to 0) before
        # upsampling. Bilinear values are convex combinations of 2x2 neighbours, which are
        # 8-connected, so removed components vanish and kept ones are untouched.
        cache_pred = threshold_probs(prob, view.threshold)
        dropped = cache_pred & ~remove_small_components(cache_pred, view.min_component)
        if dropped.any():
            prob = np.where(dropped, np.float16(0), prob)
    return prob


def _native_pairs(pred: Predictions, view: DecisionView, loader: NativeMaskLoader) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for i, image_id in enumerate(pred.image_ids):
        native = native_prob(pred, view, i)
        gt = np.asarray(loader(image_id))
        if gt.shape != native.shape:
            raise DataError(f"native mask of {image_id} is {list(gt.shape)}, expected {list(native.shape)}",
                            "the predictions and the prepared folder do not match; re-run `fxbench eval`")
        yield threshold_probs(native, view.threshold), gt > 0


def compute_per_image_stats(
    pred: Predictions,
    decision: Any,
    resolution: Resolution = "cache",
    native_masks_loader: NativeMaskLoader | None = None,
    *,
    lesions: bool = True,
) -> PerImageStats:
    """Per-image table of ``pred`` at the decision's operating point, with the decision's
    presence score attached (labels from ``pred.labels``). Use it for bootstrap, paired
    comparisons, subgroup tables and best/worst-case overlays (``stats.rows()``).
    """
    view = resolve_decision(decision)
    pred = with_derived_presence(pred, view.threshold, view.min_component)
    source = resolve_presence_source(pred, view.presence_source)
    if resolution == "cache":
        stats = per_image_segmentation(pred.probs, pred.masks, view.threshold, view.min_component,
                                       lesions=lesions, image_ids=pred.image_ids)
    elif resolution == "native":
        if native_masks_loader is None:
            raise ConfigError("native-resolution scoring needs the native masks",
                              "pass native_masks_loader (image_id -> mask), or use resolution='cache'")
        preds, gts = zip(*_native_pairs(pred, view, native_masks_loader), strict=True) if pred.n else ((), ())
        stats = stats_from_binary(preds, gts, image_ids=pred.image_ids, lesions=lesions)
    else:
        raise ConfigError(f"resolution must be 'cache' or 'native', got '{resolution}'")
    return stats.with_presence(pred.presence[source], pred.labels)


def _metric_card(view: DecisionView, seg: dict[str, Any], n: int, ci: bool) -> dict[str, dict[str, Any]]:
    pixel_op = f"pixel prob >= {view.threshold} ({view.threshold_source})"
    if view.min_component > 1:
        pixel_op += f", components < {view.min_component} cache pixels removed"
    pres_op = f"presence score >= {view.presence_threshold} ({view.threshold_source})"
    n_pos, n_neg, n_les = seg["num_positive"], seg["num_negative"], seg.get("num_lesions")
    ci_text = "stratified bootstrap percentile 95% CI" if ci else None
    rank = "threshold-free (ranking of presence scores)"

    def card(agg: str, unit: str, empty: str, op: str, count: int | None, has_ci: bool = False) -> dict[str, Any]:
        return {"aggregation": agg, "unit": unit, "empty_case": empty, "operating_point": op,
                "n": count, "ci": ci_text if has_ci else None}

    return {
        "dice_pos": card("per image, mean over images with non-empty GT", "image",
                         "images with empty GT excluded", pixel_op, n_pos, True),
        "iou_pos": card("per image, mean over images with non-empty GT", "image",
                        "images with empty GT excluded", pixel_op, n_pos, True),
        "dice": card("per image, mean over all images", "image",
                     "empty GT & empty prediction = 1; empty GT & any predicted pixel ~ 0", pixel_op, n),
        "dice_pooled": card("pooled pixels over all images: 2TP/(2TP+FP+FN)", "pixel",
                            "no special case (NaN only if no GT and no predicted pixel anywhere)", pixel_op, n),
        "precision_pos": card("pooled pixels over all images: TP/(TP+FP)", "pixel",
                              "NaN if no pixel predicted", pixel_op, n),
        "recall_pos": card("pooled pixels over all images: TP/(TP+FN)", "pixel",
                           "NaN if no GT pixel", pixel_op, n),
        "empty_specificity": card("share of images with empty GT whose prediction is empty", "image",
                                  "only images with empty GT", pixel_op, n_neg),
        "lesion_recall": card("pooled over GT lesions (8-connected components): hit = any pixel overlap "
                              "with a predicted component", "lesion", "images with empty GT have no lesions",
                              pixel_op, n_les, True),
        "lesion_recall_iou10": card(f"pooled over GT lesions: hit = one predicted component with IoU >= {LESION_IOU_MIN}",
                                    "lesion", "images with empty GT have no lesions", pixel_op, n_les),
        "lesion_fp_per_image": card("predicted components touching no GT pixel, summed, / all images",
                                    "image", "counts on every image, empty GT included", pixel_op, n),
        "roc_auc_presence": card("per image, tie-aware Mann-Whitney AUC", "image",
                                 "NaN if a class is absent", rank, n, True),
        "average_precision_presence": card("per image, step-wise AP (scikit-learn convention, ties as one step)",
                                           "image", "NaN without positives", rank, n, True),
        "sensitivity_at_spec90": card("per image, best sensitivity among thresholds with specificity >= 0.90",
                                      "image", "NaN if a class is absent",
                                      "threshold chosen on the evaluated split by definition", n, True),
        "sensitivity_at_spec95": card("per image, best sensitivity among thresholds with specificity >= 0.95",
                                      "image", "NaN if a class is absent",
                                      "threshold chosen on the evaluated split by definition", n),
        "best_f1_presence": card("per image, max F1 over thresholds at distinct scores", "image",
                                 "NaN without positives",
                                 "threshold chosen on the evaluated split (optimistic; not a frozen operating point)", n),
        "precision_presence": card("per image", "image", "NaN if no image predicted positive", pres_op, n),
        "recall_presence": card("per image", "image", "NaN without positives", pres_op, n),
        "specificity_presence": card("per image", "image", "NaN without negatives", pres_op, n),
        "brier_presence": card("per image, mean (score - label)^2", "image", "needs scores in [0,1]", rank, n),
        "ece_presence": card(f"per image, {ECE_BINS} equal-width bins, sum_b n_b/N |mean label - mean score|",
                             "image", "empty bins skipped; needs scores in [0,1]", rank, n),
    }


def evaluate_predictions(
    pred: Predictions,
    decision: Any,
    bootstrap: int = 2000,
    seed: int = 0,
    subgroups: Mapping[str, np.ndarray] | None = None,
    resolution: Resolution = "cache",
    native_masks_loader: NativeMaskLoader | None = None,
    gt_boxes: Mapping[str, np.ndarray] | None = None,
    box_score: str = "max",
    box_bootstrap: int | None = None,
) -> dict[str, Any]:
    """The whole ``RUN/metrics/<split>.json`` body.

    Args:
        pred: predictions of one split (cache resolution).
        decision: a decision.json dict (or object) with at least ``threshold``; also read:
            presence_source (default auto), presence_threshold (0.5), min_component (0),
            source and selected_on (echoed as the threshold source).
        bootstrap: stratified bootstrap resamples for the ``_ci95`` keys (0 = off).
        seed: bootstrap seed.
        subgroups: name -> 0/1 [N] flags aligned with ``pred.image_ids`` (see
            :func:`~fxbench.evaluate.subgroups.metadata_from_records`), or None.
        resolution: ``cache`` (letterboxed S x S, the seed's convention) or ``native``.
        native_masks_loader: image_id -> native mask; required for ``native``.
        gt_boxes: image_id -> ground-truth boxes [K,4] (``PREP/boxes.json``); when given, the
            body gets a ``boxes`` section (:mod:`fxbench.evaluate.boxes`),
            always scored at native resolution whatever ``resolution`` says.
        box_score: ``max`` or ``mean`` probability of a component (its box's score).
        box_bootstrap: resamples for the box CIs (None = ``bootstrap``; capped at ``bootstrap``).

    Returns:
        A JSON-ready dict (NaN where undefined; write it with ``fxbench.io.write_json_atomic``,
        which turns NaN into null). Keys: definitions_version, split, resolution, n, threshold,
        threshold_source, presence_source, presence_threshold, min_component, tta, every key of
        :func:`~fxbench.evaluate.metrics.aggregate_segmentation` and
        :func:`~fxbench.evaluate.metrics.presence_metrics`, ``<headline>_ci95`` for each of
        :data:`~fxbench.evaluate.bootstrap.HEADLINE_METRICS`, bootstrap, presence_sources,
        subgroups, metric_card, notes.
    """
    view = resolve_decision(decision)
    # pred_area is scored at this decision's pixel threshold (it is never stored).
    pred = with_derived_presence(pred, view.threshold, view.min_component)
    source = resolve_presence_source(pred, view.presence_source)
    stats = compute_per_image_stats(pred, view, resolution, native_masks_loader)
    seg = aggregate_segmentation(stats)
    pres = presence_metrics(pred.presence[source], pred.labels, view.presence_threshold)
    notes = list(seg.pop("notes")) + list(pres.pop("notes"))

    mismatch = int((stats.gt_positive != stats.labels).sum())
    if mismatch:
        notes.append(f"{mismatch} images have a label that disagrees with their {resolution}-resolution mask "
                     "(segmentation uses the mask, presence uses the label)")
    split = pred.meta.get("split")
    if view.selected_on and split and view.selected_on == split:
        notes.append(f"the operating point was selected on this split ({split}): thresholded metrics are optimistic")
    notes.append("best_f1_presence and its threshold are chosen on the evaluated split (optimistic)")
    if resolution == "native":
        notes.append("native resolution: cache probabilities upsampled bilinearly into the native frame, "
                     "scored against the native masks; min_component counts cache pixels")

    # Every source's ranking quality, so the choice of presence rule is visible next to the result.
    by_source: dict[str, dict[str, float]] = {}
    for name, scores in pred.presence.items():
        s = np.asarray(scores, dtype=np.float64)
        if np.isnan(s).any():
            by_source[name] = {"roc_auc_presence": float("nan"), "average_precision_presence": float("nan")}
            continue
        uniq, group = score_groups(s)
        cpos, cneg = group_counts(group, pred.labels.astype(bool), uniq.size)
        by_source[name] = {"roc_auc_presence": float(auc_from_counts(cpos, cneg)[0]),
                           "average_precision_presence": float(ap_from_counts(cpos, cneg)[0])}

    cis = bootstrap_ci(stats, bootstrap, seed, available_metrics(stats, HEADLINE_METRICS)) if bootstrap > 0 else {}
    body: dict[str, Any] = {
        "definitions_version": DEFINITIONS_VERSION,
        "split": split,
        "resolution": resolution,
        "n": pred.n,
        "threshold": view.threshold,
        "threshold_source": view.threshold_source,
        "presence_source": source,
        "presence_threshold": view.presence_threshold,
        "min_component": view.min_component,
        "tta": pred.meta.get("tta"),
        **seg,
        **pres,
        **cis,
        "bootstrap": {"n_resamples": int(bootstrap), "seed": int(seed), "method": "percentile",
                      "stratified_by": "image label", "unit": "image", "level": 0.95},
        "presence_sources": by_source,
        "subgroups": subgroup_table(stats, subgroups, n_resamples=bootstrap, seed=seed) if subgroups else {},
        "metric_card": _metric_card(view, seg, pred.n, ci=bootstrap > 0),
        "notes": notes,
    }
    if gt_boxes is not None:
        from fxbench.evaluate.boxes import box_metrics, prediction_box_matches

        matches = prediction_box_matches(pred, view, gt_boxes, box_score)
        n_box = bootstrap if box_bootstrap is None else min(int(box_bootstrap), bootstrap)
        body["boxes"] = box_metrics(matches, n_box, seed, box_score=box_score,
                                    source=f"components of prob >= {view.threshold} at native resolution")
    return body
