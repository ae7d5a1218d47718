"""``fxbench compare``: paired tests of result folders from their saved predictions only.

Each folder (run, ensemble, blend, cross-validation pool) contributes its predictions artifact
of one split scored at its own frozen operating point. The first folder is the reference A;
every other folder B is compared with it on the same images: paired stratified bootstrap of
B - A for the headline metrics, DeLong's test for the presence AUC, McNemar's test on the
frozen presence decisions, and with more than one B, Holm-adjusted p-values (one family per
metric/test: the comparisons against A). Definitions: docs/metrics.md "Paired comparisons".

Test comparisons read only sealed test artifacts, and each is logged as a test access of its
folder (:func:`fxbench.select.sealed.sealed_test_input`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.artifacts.predictions import Predictions, load_predictions, subset
from fxbench.errors import DataError, UsageError
from fxbench.evaluate import (
    HEADLINE_METRICS,
    compute_per_image_stats,
    point_estimates,
    resolve_decision,
    resolve_presence_source,
    with_derived_presence,
)
from fxbench.evaluate.bootstrap import percentile_interval, stratified_indices
from fxbench.evaluate.metrics import PerImageStats, threshold_probs
from fxbench.evaluate.paired import (
    LOWER_IS_BETTER,
    PairedDelta,
    bootstrap_p_value,
    delong_test,
    holm_adjust,
    mcnemar_test,
    paired_bootstrap,
)
from fxbench.io import read_json

#: Significance level for "significantly worse" marks (on Holm-adjusted p-values).
ALPHA = 0.05


@dataclass
class CompareInput:
    """One folder's predictions of a split at its frozen operating point."""

    name: str
    folder: Path
    split: str
    pred: Predictions
    decision: dict[str, Any]  # threshold, presence_source (resolved), presence_threshold, min_component
    decision_sha256: str | None = None
    box_score: str = "max"  # the decision's box score (max or mean probability of a component)

    def __post_init__(self) -> None:
        # Derived presence sources (pred_area) exist only at an operating point: add them here.
        self.pred = with_derived_presence(self.pred, float(self.decision["threshold"]),
                                          int(self.decision.get("min_component") or 0))

    def stats(self) -> PerImageStats:
        """Per-image table at the decision (cache resolution), with its presence score."""
        return compute_per_image_stats(self.pred, self.decision, "cache")

    def presence_scores(self) -> np.ndarray:
        return np.asarray(self.pred.presence[self.decision["presence_source"]], dtype=np.float64)

    def presence_decisions(self) -> np.ndarray:
        """bool [N]: image predicted fractured at the frozen presence threshold (score >= t)."""
        return threshold_probs(self.presence_scores(), float(self.decision["presence_threshold"]))


def operating_point(source: dict[str, Any], pred: Predictions) -> dict[str, Any]:
    """The operating point keys of a decision or metrics dict, presence source resolved."""
    view = resolve_decision(source)
    derived = with_derived_presence(pred, view.threshold, view.min_component)
    return {"threshold": view.threshold, "presence_source": resolve_presence_source(derived, view.presence_source),
            "presence_threshold": view.presence_threshold, "min_component": view.min_component}


def val_input(folder: str | Path) -> CompareInput:
    """A folder's val predictions at its tuned decision (``decision.json``), or else at the
    operating point its ``metrics/val.json`` was scored at.

    Raises:
        DataError: no val predictions, or neither a decision nor val metrics.
    """
    folder = Path(folder)
    path = folder / "predictions" / "val.npz"
    if not path.is_file():
        raise DataError(f"{folder} has no val predictions ({path})", f"run `fxbench eval {folder} --split val`")
    pred = load_predictions(path)
    for src in (folder / "decision.json", folder / "metrics" / "val.json"):
        if src.is_file():
            doc = dict(read_json(src))
            return CompareInput(folder.name, folder, "val", pred, operating_point(doc, pred),
                                box_score=str(doc.get("box_score") or "max"))
    raise DataError(f"{folder} has neither decision.json nor metrics/val.json",
                    f"run `fxbench eval {folder} --split val` (and `fxbench tune {folder}`)")


def name_apart(inputs: Sequence[CompareInput]) -> None:
    """Label each input by its folder name, or by as many trailing path parts as tell the folders
    apart (``dual-cv/pooled`` vs ``plain-cv/pooled``), so tables and JSON never show two equal names."""
    parts = [Path(i.folder).resolve().parts for i in inputs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            for inp, label in zip(inputs, labels, strict=True):
                inp.name = label
            return
    # One folder given twice (a self-comparison): its own name is the clearest label.


def align(ref: CompareInput, other: CompareInput) -> CompareInput:
    """``other`` reordered to ``ref``'s image order; refuses other images or ground truth.

    Raises:
        DataError: the image id sets differ, or labels / masks differ for the same image.
    """
    a, b = ref.pred, other.pred
    where = f"{other.name} vs {ref.name}"
    if set(a.image_ids) != set(b.image_ids):
        only_a, only_b = len(set(a.image_ids) - set(b.image_ids)), len(set(b.image_ids) - set(a.image_ids))
        raise DataError(f"{where}: the {ref.split} predictions cover different images "
                        f"({only_a} only in {ref.name}, {only_b} only in {other.name})",
                        "compare folders predicted on the same split of the same prepared folder")
    if b.image_ids != a.image_ids:
        pos = {i: k for k, i in enumerate(b.image_ids)}
        b = subset(b, np.array([pos[i] for i in a.image_ids]))
        other = CompareInput(other.name, other.folder, other.split, b, other.decision, other.decision_sha256,
                             other.box_score)
    if not np.array_equal(a.labels, b.labels):
        raise DataError(f"{where}: ground-truth labels differ on {int((a.labels != b.labels).sum())} images",
                        "both must come from the same prepared folder")
    if a.masks.shape != b.masks.shape or not np.array_equal(a.masks, b.masks):
        raise DataError(f"{where}: ground-truth masks differ (cache size {a.size} vs {b.size} px, or other masks)",
                        "compare runs trained at the same data.image_size on the same prepared folder")
    return other


def _finite(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _clean(obj: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> floats, recursively (JSON-ready)."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return _finite(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def compare_inputs(
    inputs: Sequence[CompareInput],
    n_resamples: int = 2000,
    seed: int = 0,
    metrics: Sequence[str] = HEADLINE_METRICS,
    gt_boxes: Mapping[str, Any] | None = None,
    box_resamples: int = 500,
) -> dict[str, Any]:
    """Paired comparison of ``inputs[1:]`` against ``inputs[0]`` (differences B - A).

    With ``gt_boxes`` (image id -> native boxes, ``PREP/boxes.json``) each comparison also has
    ``boxes``: the box metrics (AP50, AP50:95, mean FROC) of each folder's components at its
    operating point, paired-bootstrapped the same way over ``box_resamples`` resamples.

    Returns a JSON-ready dict: split, n, num_positive, reference, runs (operating point and
    point estimates of each), comparisons (one per B: ``metrics`` {name: a, b, delta,
    delta_ci95, p_value, p_holm, significant, worse}, ``delong``, ``mcnemar``), method.
    ``worse`` means B is significantly worse than A at :data:`ALPHA` on the Holm-adjusted p.

    Raises:
        UsageError: fewer than two inputs or ``n_resamples`` < 1.
        DataError: inputs do not describe the same images and ground truth.
    """
    if len(inputs) < 2:
        raise UsageError("compare needs at least two folders", "e.g. fxbench compare runs/a runs/b --split val")
    if n_resamples < 1:
        raise UsageError(f"--bootstrap must be >= 1 for a paired comparison, got {n_resamples}")
    name_apart(inputs)
    ref = inputs[0]
    others = [align(ref, b) for b in inputs[1:]]
    stats = [ref.stats()] + [b.stats() for b in others]
    runs = []
    for inp, st in zip([ref, *others], stats, strict=True):
        runs.append({"name": inp.name, "path": str(inp.folder), **inp.decision,
                     "decision_sha256": inp.decision_sha256, "metrics": point_estimates(st, metrics)})
    comparisons: list[dict[str, Any]] = []
    labels = ref.pred.labels.astype(bool)
    for b, st in zip(others, stats[1:], strict=True):
        paired = {k: v.to_dict() for k, v in paired_bootstrap(stats[0], st, metrics, n_resamples, seed).items()}
        comparisons.append({
            "a": ref.name, "b": b.name, "metrics": paired,
            "delong": delong_test(ref.presence_scores(), b.presence_scores(), labels).to_dict(),
            "mcnemar": mcnemar_test(ref.presence_decisions(), b.presence_decisions(), labels).to_dict(),
        })
    if gt_boxes is not None:
        for comp, b in zip(comparisons, others, strict=True):
            comp["boxes"] = _box_deltas(ref, b, gt_boxes, box_resamples, seed)
    _add_holm(comparisons, metrics)
    return _clean({
        "split": ref.split,
        "n": ref.pred.n,
        "num_positive": int(labels.sum()),
        "reference": ref.name,
        "runs": runs,
        "comparisons": comparisons,
        "method": {
            "difference": "B - A (A = the first folder)",
            "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "unit": "image",
                          "stratified_by": "image label", "paired": "the same resample of images for A and B",
                          "interval": "percentile 95%",
                          "p_value": "min(1, 2 min(1 + #{d* <= 0}, 1 + #{d* >= 0}) / (B + 1))"},
            "delong": "DeLong et al. 1988, tie-aware, two-sided normal test",
            "mcnemar": "exact binomial test on discordant frozen presence decisions (score >= presence_threshold)",
            "holm": "per metric (and per DeLong / McNemar): over the comparisons against A" if len(others) > 1
                    else "not applied (one comparison)",
            "alpha": ALPHA,
            "resolution": "cache",
        },
    })


def _add_holm(comparisons: list[dict[str, Any]], metrics: Sequence[str]) -> None:
    """``p_holm`` (Holm over the comparisons, per metric), ``significant`` and ``worse``."""
    def family(get: Callable[[dict[str, Any]], dict[str, Any] | None], lower_better: bool) -> None:
        rows = [get(c) for c in comparisons]
        present = [r for r in rows if r is not None]
        for r, p in zip(present, holm_adjust([r["p_value"] for r in present]), strict=True):
            r["p_holm"] = p
            sig = bool(np.isfinite(p) and p < ALPHA)
            r["significant"] = sig
            d = r["delta"]
            r["worse"] = bool(sig and np.isfinite(d) and (d > 0 if lower_better else d < 0))

    def metric_row(name: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
        return lambda c: c["metrics"].get(name)

    def box_row(name: str) -> Callable[[dict[str, Any]], dict[str, Any] | None]:
        return lambda c: (c.get("boxes") or {}).get(name)

    for m in metrics:
        family(metric_row(m), m in LOWER_IS_BETTER)
    for m in ("box_ap50", "box_ap50_95", "froc_mean"):
        family(box_row(m), False)
    family(lambda c: c["delong"], False)
    family(lambda c: c["mcnemar"], False)


def _box_deltas(ref: CompareInput, other: CompareInput, gt_boxes: Mapping[str, Any], n_resamples: int,
                seed: int) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of B - A for the headline box metrics (the same resample for both)."""
    from fxbench.evaluate.boxes import (
        BOX_HEADLINE,
        box_bootstrap_rows,
        box_point_estimates,
        prediction_box_matches,
    )

    ma = prediction_box_matches(ref.pred, ref.decision, gt_boxes, ref.box_score)
    mb = prediction_box_matches(other.pred, other.decision, gt_boxes, other.box_score)
    idx = stratified_indices(ref.pred.labels, n_resamples, seed)
    ra, rb = box_bootstrap_rows(ma, idx), box_bootstrap_rows(mb, idx)
    pa, pb = box_point_estimates(ma), box_point_estimates(mb)
    out = {}
    for name in BOX_HEADLINE:
        d = rb[name] - ra[name]
        out[name] = PairedDelta(a=pa[name], b=pb[name], delta=pb[name] - pa[name], delta_ci95=percentile_interval(d),
                                p_value=bootstrap_p_value(d), n_resamples=int(np.isfinite(d).sum())).to_dict()
    return out
