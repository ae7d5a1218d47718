"""fxbench.evaluate: metric definitions, bootstrap CIs, subgroups, native-resolution scoring.

Pure numpy/scipy (no torch): arrays in, numbers out. Definitions are in docs/metrics.md.

Main entry points:

* :func:`evaluate_predictions` -- the whole ``RUN/metrics/<split>.json`` body for a
  :class:`~fxbench.artifacts.predictions.Predictions` and a decision.
* :func:`segmentation_metrics`, :func:`presence_metrics` -- one operating point, for grids
  (``tune``, ``ensemble``, ``blend``).
* :func:`compute_per_image_stats` + :func:`bootstrap_ci` / :func:`paired_bootstrap_delta` /
  :func:`subgroup_table` -- the building blocks, shared so every command scores the same way.
* :func:`prediction_box_matches` / :func:`match_boxes` + :func:`box_metrics` /
  :func:`paired_box_delta` -- box metrics (COCO AP via pycocotools, FROC) and their paired
  comparison (for ``compare``).
* :func:`paired_bootstrap`, :func:`delong_test`, :func:`mcnemar_test`, :func:`holm_adjust` --
  paired tests of B - A on the same images (``fxbench compare``).
"""

from fxbench.evaluate.bootstrap import (
    HEADLINE_METRICS,
    SUPPORTED_BOOTSTRAP_METRICS,
    bootstrap_ci,
    bootstrap_distributions,
    paired_bootstrap_delta,
    point_estimates,
    stratified_indices,
)
from fxbench.evaluate.boxes import (
    BoxMatches,
    box_metrics,
    box_rows,
    match_boxes,
    paired_box_delta,
    prediction_box_matches,
)
from fxbench.evaluate.evaluation import (
    DecisionView,
    compute_per_image_stats,
    evaluate_predictions,
    resolve_decision,
)
from fxbench.evaluate.metrics import (
    DEFINITIONS_VERSION,
    LesionMatch,
    PerImageStats,
    aggregate_segmentation,
    average_precision,
    best_f1,
    brier_score,
    calibration_bins,
    expected_calibration_error,
    match_lesions,
    per_image_segmentation,
    precision_recall_curve,
    presence_metrics,
    remove_small_components,
    roc_auc,
    roc_curve,
    segmentation_metrics,
    sensitivity_at_specificity,
    threshold_probs,
)
from fxbench.evaluate.native import crop_box, resize_bilinear, to_native
from fxbench.evaluate.paired import (
    DeLongResult,
    McNemarResult,
    PairedDelta,
    bootstrap_p_value,
    delong_test,
    holm_adjust,
    mcnemar_test,
    paired_bootstrap,
)
from fxbench.evaluate.presence import (
    DERIVED_PRESENCE,
    mean_scores,
    pred_area_scores,
    with_derived_presence,
)
from fxbench.evaluate.rules import (
    COMPOSITE_METRICS,
    PRESENCE_ORDER,
    composite_array,
    composite_value,
    metric_value,
    presence_order,
    resolve_presence_source,
    selection_key,
    selection_keys,
    with_composites,
)
from fxbench.evaluate.subgroups import SUBGROUP_COLUMNS, metadata_from_records, subgroup_table

__all__ = [
    "COMPOSITE_METRICS",
    "PRESENCE_ORDER",
    "composite_array",
    "composite_value",
    "metric_value",
    "presence_order",
    "selection_key",
    "selection_keys",
    "with_composites",
    "DeLongResult",
    "McNemarResult",
    "PairedDelta",
    "bootstrap_p_value",
    "delong_test",
    "holm_adjust",
    "mcnemar_test",
    "paired_bootstrap",
    "DEFINITIONS_VERSION",
    "DERIVED_PRESENCE",
    "HEADLINE_METRICS",
    "SUBGROUP_COLUMNS",
    "SUPPORTED_BOOTSTRAP_METRICS",
    "BoxMatches",
    "DecisionView",
    "LesionMatch",
    "PerImageStats",
    "aggregate_segmentation",
    "average_precision",
    "best_f1",
    "bootstrap_ci",
    "box_metrics",
    "box_rows",
    "bootstrap_distributions",
    "brier_score",
    "calibration_bins",
    "compute_per_image_stats",
    "crop_box",
    "evaluate_predictions",
    "expected_calibration_error",
    "match_boxes",
    "match_lesions",
    "mean_scores",
    "metadata_from_records",
    "paired_bootstrap_delta",
    "paired_box_delta",
    "per_image_segmentation",
    "point_estimates",
    "precision_recall_curve",
    "pred_area_scores",
    "prediction_box_matches",
    "presence_metrics",
    "remove_small_components",
    "resize_bilinear",
    "resolve_decision",
    "resolve_presence_source",
    "roc_auc",
    "roc_curve",
    "segmentation_metrics",
    "sensitivity_at_specificity",
    "stratified_indices",
    "subgroup_table",
    "threshold_probs",
    "to_native",
    "with_derived_presence",
]
