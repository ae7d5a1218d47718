"""Image-level presence scores derived from a probability map (the seed's ``presence_score_mode``).

Stored sources (written by inference into the predictions artifact; threshold-free):

* ``max``: the largest in-image pixel probability.
* ``topk_mean``: the mean of the k = max(1, round(S*S*frac)) largest probabilities.
* ``mean``: the mean pixel probability over the image's pixels (the box).
* ``head``: the model's presence head (when it has one).

Derived source (depends on the operating point, so it is computed when a decision is applied,
never stored):

* ``pred_area``: the fraction of the image's pixels predicted fracture, i.e. prob >= the pixel
  threshold (after ``min_component`` removal when the decision sets one). This is the seed's
  ``pred_area`` at its seg threshold.

"The image's pixels" are those inside the box (the letterbox box, or the whole square for
stretch). For stretch inputs -- the seed's default geometry -- that is the whole S x S map, so
``mean`` and ``pred_area`` equal the seed's definitions exactly. For letterbox inputs the seed
averaged over S*S including the padding, whose probabilities fxbench sets to 0 (padding is not
anatomy); averaging over the image alone keeps the score from depending on the aspect ratio.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from fxbench.evaluate.metrics import remove_small_components, threshold_probs
from fxbench.evaluate.rules import DERIVED_PRESENCE

if TYPE_CHECKING:
    from fxbench.artifacts.predictions import Predictions

__all__ = ["DERIVED_PRESENCE", "box_areas", "mean_scores", "pred_area_scores", "with_derived_presence"]


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Pixels inside each box ``[N,4]`` (top, left, h, w) -> float64 [N] (at least 1)."""
    b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
    return np.maximum(b[:, 2] * b[:, 3], 1).astype(np.float64)


def mean_scores(probs: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``mean`` source: mean probability inside each box -> float32 [N].

    ``probs`` [N,S,S] must be 0 outside the boxes (as inference writes them).
    """
    p = np.asarray(probs)
    sums = p.reshape(p.shape[0], -1).sum(axis=1, dtype=np.float64)
    return (sums / box_areas(boxes)).astype(np.float32)


def pred_area_scores(
    probs: np.ndarray, boxes: np.ndarray, threshold: float, min_component: int = 0
) -> np.ndarray:
    """``pred_area`` source: share of each image's pixels with prob >= ``threshold`` -> float32 [N].

    With ``min_component`` > 1 the components smaller than that (cache pixels) are removed
    first, so the score is the area of the mask the decision actually predicts.
    """
    p = np.asarray(probs)
    n = p.shape[0]
    areas = box_areas(boxes)
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        hard = threshold_probs(p[i], threshold)
        if min_component > 1:
            hard = remove_small_components(hard, min_component)
        out[i] = np.count_nonzero(hard)
    return (out / areas).astype(np.float32)


def with_derived_presence(pred: Predictions, threshold: float, min_component: int = 0) -> Predictions:
    """``pred`` with the derived sources (``pred_area``) added at this operating point.

    A shallow copy: the arrays are shared, only the presence dict is new. Sources the artifact
    already holds under those names (e.g. a peer's own ``pred_area``) are kept as they are.
    """
    presence = dict(pred.presence)
    if "pred_area" not in presence:
        presence["pred_area"] = pred_area_scores(pred.probs, pred.boxes, threshold, min_component)
    return replace(pred, presence=presence)
