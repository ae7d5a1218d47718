"""Box metrics: COCO AP (pycocotools) and FROC over one split, with bootstrap CIs.

Frame and units: every box is ``[x, y, w, h]`` in pixels of the image's native frame after the
EXIF transpose (the frame of the archive's annotations and of ``PREP/masks``), ``x, y`` the
top-left corner, continuous coordinates (a pixel ``(r, c)`` covers ``[c, c+1) x [r, r+1)``).

* Predicted boxes of a probability map: the 8-connected components of ``prob >= threshold`` at
  native resolution (:func:`component_boxes`), each the tight box of its pixels, scored by the
  ``max`` (default) or ``mean`` probability inside the component (``eval.box_score``).
* Matching is pycocotools' own (``COCOeval.evaluate``, iouType ``bbox``, one category, area
  range ``all``, at most :data:`MAX_DETS` boxes per image by score): in descending score order
  each predicted box takes the unmatched ground-truth box with the highest IoU >= t.
* ``box_ap50`` and ``box_ap50_95`` are the library's ``stats[1]`` and ``stats[0]``: the
  101-point interpolated precision averaged over recall (and over IoU 0.50:0.05:0.95), every
  image of the split included, negatives too (their boxes are false positives).
* FROC, hit rule: a ground-truth box is *hit* when pycocotools matches a predicted box to it at
  IoU >= 0.5 (the AP50 matching); an unmatched predicted box is a false positive, a second box
  on an already-hit lesion included. Sensitivity = hit GT boxes / all GT boxes; FP rate = false
  positives / images. ``froc_sens_at_<r>`` is the highest sensitivity among score cut-offs
  whose FP rate is <= r (0 when none), for r in :data:`FROC_FP_RATES`; ``froc_mean`` is their
  mean.
* CIs: the image-level stratified percentile bootstrap of :mod:`fxbench.evaluate.bootstrap`
  (same index draws). For each resample, pycocotools' ``accumulate`` runs on the resampled
  per-image match table, so the bootstrap AP uses the library's definition too.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from fxbench.errors import ConfigError, DataError
from fxbench.evaluate.bootstrap import percentile_interval, stratified_indices
from fxbench.evaluate.metrics import label_components, threshold_probs

#: False positives per image at which FROC sensitivity is reported.
FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: IoU at which a predicted box hits a ground-truth box (FROC; also AP50's).
HIT_IOU = 0.5
#: Boxes per image pycocotools keeps (its default, by descending score).
MAX_DETS = 100
BOX_SCORES = ("max", "mean")
#: The keys of a ``boxes`` section that get ``<key>_ci95``.
BOX_HEADLINE: tuple[str, ...] = ("box_ap50", "box_ap50_95", "froc_mean")


def froc_key(rate: float) -> str:
    """``froc_sens_at_0.125`` ... ``froc_sens_at_8`` (rate written without a trailing .0)."""
    return f"froc_sens_at_{rate:g}"


#: Every scalar of a ``boxes`` section, in display order.
BOX_METRICS: tuple[str, ...] = ("box_ap50", "box_ap50_95", "froc_mean", *(froc_key(r) for r in FROC_FP_RATES))


# --------------------------------------------------------------------------------------
# boxes from probability maps


def component_boxes(prob: np.ndarray, threshold: float, score: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores of the components of one native probability map.

    Args:
        prob: float [H,W] probabilities (native frame).
        threshold: pixel threshold (``prob >= threshold``, as for masks).
        score: ``max`` or ``mean`` probability inside each component.

    Returns:
        (float64 [K,4] ``x, y, w, h`` pixel boxes, float64 [K] scores), K = components.
    """
    if score not in BOX_SCORES:
        raise ConfigError(f"box score must be one of {BOX_SCORES}, got {score!r}")
    prob = np.asarray(prob)
    binary = threshold_probs(prob, threshold)
    labels, count = label_components(binary)
    if count == 0:
        return np.zeros((0, 4)), np.zeros(0)
    slices = ndimage.find_objects(labels)
    boxes = np.array([[s[1].start, s[0].start, s[1].stop - s[1].start, s[0].stop - s[0].start] for s in slices],
                     dtype=np.float64)
    index = np.arange(1, count + 1)
    values = prob.astype(np.float64, copy=False)
    scores = ndimage.maximum(values, labels, index) if score == "max" else ndimage.mean(values, labels, index)
    return boxes, np.asarray(scores, dtype=np.float64)


def prediction_box_matches(pred: Any, decision: Any, gt_boxes: Mapping[str, Any], box_score: str = "max") -> BoxMatches:
    """Boxes of a predictions artifact at a decision's operating point, matched to ``gt_boxes``.

    Each cache map goes back to native size (with the decision's small components removed, as
    for native segmentation scoring; only the window that can reach the threshold, see
    :func:`~fxbench.evaluate.native.to_native_window`), then :func:`component_boxes`. What ``evaluate_predictions``
    and ``compare`` (with :func:`paired_box_delta`) use.
    """
    from fxbench.evaluate.evaluation import cache_prob, resolve_decision
    from fxbench.evaluate.native import to_native_window

    view = resolve_decision(decision)
    detections: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, image_id in enumerate(pred.image_ids):
        # Only the native window that can reach the threshold is upsampled (same values as the
        # full map): a 2880 x 2304 radiograph with one small component costs a small window.
        window = to_native_window(cache_prob(pred, view, i), pred.boxes[i], pred.native_hw[i], view.threshold)
        if window is None:
            detections[image_id] = (np.zeros((0, 4)), np.zeros(0))
            continue
        part, top, left = window
        boxes, scores = component_boxes(part, view.threshold, box_score)
        boxes[:, 0] += left
        boxes[:, 1] += top
        detections[image_id] = (boxes, scores)
    return match_boxes(pred.image_ids, pred.labels, gt_boxes, detections)


# --------------------------------------------------------------------------------------
# matching (pycocotools)


def _as_boxes(value: Any, where: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1, 4) if np.size(value) else np.zeros((0, 4))
    if not np.isfinite(arr).all() or (arr[:, 2:] < 0).any():
        raise DataError(f"{where}: boxes must be finite x, y, w, h with w, h >= 0")
    return arr


def _quiet() -> contextlib.AbstractContextManager[Any]:
    # pycocotools prints progress lines on stdout; the CLI's stdout may carry --json.
    return contextlib.redirect_stdout(io.StringIO())


@dataclass
class BoxMatches:
    """One split's ground truth, detections and pycocotools' per-image match table.

    Attributes:
        image_ids: N ids (COCO image id = position + 1).
        labels: bool [N] image labels (bootstrap strata).
        n_gt: int [N] ground-truth boxes per image.
        n_det: int [N] predicted boxes per image (before the :data:`MAX_DETS` cap).
        det_image, det_score: int/float [D] image index and score of each kept detection.
        det_hit: bool [D] matched at IoU 0.5 (the FROC hit rule).
        coco_eval: the evaluated ``COCOeval`` (``evalImgs`` is the match table).
    """

    image_ids: list[str]
    labels: np.ndarray
    n_gt: np.ndarray
    n_det: np.ndarray
    det_image: np.ndarray
    det_score: np.ndarray
    det_hit: np.ndarray
    coco_eval: Any

    @property
    def n(self) -> int:
        return len(self.image_ids)


def match_boxes(
    image_ids: Sequence[str],
    labels: np.ndarray,
    gt: Mapping[str, Any],
    detections: Mapping[str, tuple[Any, Any]],
) -> BoxMatches:
    """Match detections to ground truth with pycocotools over every image of ``image_ids``.

    Args:
        image_ids: the split's images (negatives included).
        labels: 0/1 [N] image labels.
        gt: image_id -> [G,4] boxes (missing = no box).
        detections: image_id -> ([K,4] boxes, [K] scores) (missing = no box).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = list(image_ids)
    y = np.asarray(labels).astype(bool).reshape(-1)
    if y.shape != (len(ids),):
        raise DataError(f"labels have shape {list(y.shape)}, expected [{len(ids)}]")
    images = [{"id": k + 1, "file_name": i} for k, i in enumerate(ids)]
    categories = [{"id": 1, "name": "fracture"}]
    gt_anns: list[dict[str, Any]] = []
    dt_anns: list[dict[str, Any]] = []
    n_gt = np.zeros(len(ids), dtype=np.int64)
    n_det = np.zeros(len(ids), dtype=np.int64)
    for k, image_id in enumerate(ids):
        for b in _as_boxes(gt.get(image_id, ()), f"ground truth of {image_id}"):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": k + 1, "category_id": 1, "bbox": b.tolist(),
                            "area": float(b[2] * b[3]), "iscrowd": 0})
            n_gt[k] += 1
        boxes, scores = detections.get(image_id, ((), ()))
        boxes = _as_boxes(boxes, f"predictions of {image_id}")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if scores.shape[0] != boxes.shape[0] or not np.isfinite(scores).all():
            raise DataError(f"predictions of {image_id}: {boxes.shape[0]} boxes but {scores.shape[0]} finite scores")
        for b, s in zip(boxes, scores, strict=True):
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": k + 1, "category_id": 1, "bbox": b.tolist(),
                            "score": float(s), "area": float(b[2] * b[3]), "iscrowd": 0})
            n_det[k] += 1
    with _quiet():
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        coco_gt.createIndex()
        # Built like COCO.loadRes, which refuses an empty result list (a split with no box).
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.params.imgIds = [im["id"] for im in images]
        ev.params.areaRng, ev.params.areaRngLbl = [[0.0, 1e10]], ["all"]
        ev.params.maxDets = [MAX_DETS]
        ev.evaluate()
    t50 = int(np.argmin(np.abs(ev.params.iouThrs - HIT_IOU)))
    det_image, det_score, det_hit = [], [], []
    for k, e in enumerate(ev.evalImgs):
        if e is None or not len(e["dtScores"]):
            continue
        det_image.append(np.full(len(e["dtScores"]), k, dtype=np.int64))
        det_score.append(np.asarray(e["dtScores"], dtype=np.float64))
        det_hit.append(np.asarray(e["dtMatches"][t50] > 0))
    cat = (lambda parts, dt: np.concatenate(parts) if parts else np.zeros(0, dtype=dt))  # noqa: E731
    return BoxMatches(ids, y, n_gt, n_det, cat(det_image, np.int64), cat(det_score, np.float64),
                      cat(det_hit, bool), ev)


# --------------------------------------------------------------------------------------
# metrics


def _ap_from_precision(precision: np.ndarray, iou_thrs: np.ndarray) -> tuple[float, float]:
    """(AP50, AP50:95) from ``COCOeval.eval['precision']`` [T,R,K,A,M], as ``summarize`` does."""
    def mean_valid(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(valid.mean()) if valid.size else float("nan")

    t50 = int(np.argmin(np.abs(iou_thrs - HIT_IOU)))
    return mean_valid(precision[t50]), mean_valid(precision)


def _accumulate(matches: BoxMatches, order: np.ndarray | None) -> tuple[float, float]:
    """pycocotools' accumulate over the images ``order`` (with repeats) -> (AP50, AP50:95).

    For a resample, the drawn images' match records are concatenated (in draw order, which is
    the order accumulate itself concatenates them in) into one record, and the library's
    ``accumulate`` runs on it: the same numbers as on a list of the drawn images' records,
    without accumulate's per-image concatenation for each of thousands of resamples.
    """
    base = matches.coco_eval
    if order is None:
        ev = base
    else:
        table = _match_table(matches)
        counts = table["n_det"][order]
        total = int(counts.sum())
        sel = np.repeat(table["start"][order] - np.cumsum(counts) + counts, counts) + np.arange(total)
        gt_counts = table["n_gtig"][order]
        gsel = (np.repeat(table["gstart"][order] - np.cumsum(gt_counts) + gt_counts, gt_counts)
                + np.arange(int(gt_counts.sum())))
        merged = {"dtScores": table["scores"][sel], "dtMatches": table["dtm"][:, sel],
                  "dtIgnore": table["dtig"][:, sel], "gtIgnore": table["gtig"][gsel]}
        ev = copy.copy(base)
        ev.params = copy.copy(base.params)
        ev._paramsEval = copy.copy(base._paramsEval)
        ev.params.imgIds = ev._paramsEval.imgIds = [0]
        ev.params.maxDets = ev._paramsEval.maxDets = [max(total, 1)]  # each record is capped already
        ev.evalImgs = [merged]
    with _quiet():
        ev.accumulate()
    return _ap_from_precision(ev.eval["precision"], base.params.iouThrs)


def _match_table(matches: BoxMatches) -> dict[str, np.ndarray]:
    """pycocotools' per-image records (``evalImgs``) as one table with per-image offsets (cached)."""
    cached = getattr(matches, "_table", None)
    if cached is not None:
        return cached
    t = len(matches.coco_eval.params.iouThrs)
    scores, dtm, dtig, gtig = [], [], [], []
    n_det = np.zeros(matches.n, dtype=np.int64)
    n_gtig = np.zeros(matches.n, dtype=np.int64)
    for k, e in enumerate(matches.coco_eval.evalImgs):
        if e is None:
            continue
        n_det[k], n_gtig[k] = len(e["dtScores"]), len(e["gtIgnore"])
        scores.append(np.asarray(e["dtScores"], dtype=np.float64))
        dtm.append(np.asarray(e["dtMatches"]).reshape(t, -1))
        dtig.append(np.asarray(e["dtIgnore"]).reshape(t, -1))
        gtig.append(np.asarray(e["gtIgnore"]).reshape(-1))
    table = {
        "scores": np.concatenate(scores) if scores else np.zeros(0),
        "dtm": np.concatenate(dtm, axis=1) if dtm else np.zeros((t, 0)),
        "dtig": np.concatenate(dtig, axis=1) if dtig else np.zeros((t, 0), dtype=bool),
        "gtig": np.concatenate(gtig) if gtig else np.zeros(0),
        "n_det": n_det, "start": np.cumsum(n_det) - n_det,
        "n_gtig": n_gtig, "gstart": np.cumsum(n_gtig) - n_gtig,
    }
    matches._table = table  # type: ignore[attr-defined]
    return table


def _froc_rows(matches: BoxMatches, weights: np.ndarray) -> np.ndarray:
    """FROC sensitivities float64 [B, len(FROC_FP_RATES)] for image weights [B,N] (draw counts)."""
    b = weights.shape[0]
    if matches.det_score.size and b > 1:
        # [B, D] work arrays: chunk the resamples so a weak model's many boxes stay in memory bounds.
        step = max(1, int(4_000_000 // matches.det_score.size))
        if step < b:
            return np.concatenate([_froc_rows(matches, weights[i:i + step]) for i in range(0, b, step)])
    n_images = weights.sum(axis=1).astype(np.float64)
    n_gt = (weights * matches.n_gt[None, :]).sum(axis=1).astype(np.float64)
    out = np.zeros((b, len(FROC_FP_RATES)))
    if matches.det_score.size:
        order = np.argsort(-matches.det_score, kind="mergesort")
        score = matches.det_score[order]
        w = weights[:, matches.det_image[order]].astype(np.float64)  # [B, D]
        hit = matches.det_hit[order]
        tp = np.cumsum(w * hit, axis=1)
        fp = np.cumsum(w * ~hit, axis=1)
        # A cut-off keeps every box with score >= s: evaluate only at the last box of a tie.
        last = np.append(score[1:] != score[:-1], True)
        tp, fp = tp[:, last], fp[:, last]
        with np.errstate(invalid="ignore", divide="ignore"):
            sens = tp / n_gt[:, None]
            rate = fp / n_images[:, None]
        for j, r in enumerate(FROC_FP_RATES):
            ok = rate <= r
            out[:, j] = np.where(ok, sens, 0.0).max(axis=1, initial=0.0)
    out[n_gt == 0] = np.nan
    return out


def box_point_estimates(matches: BoxMatches) -> dict[str, float]:
    """AP50, AP50:95 (pycocotools) and FROC on the split as given."""
    ap50, ap = _accumulate(matches, None)
    froc = _froc_rows(matches, np.ones((1, matches.n), dtype=np.int64))[0]
    out = {"box_ap50": ap50, "box_ap50_95": ap}
    out.update({froc_key(r): float(v) for r, v in zip(FROC_FP_RATES, froc, strict=True)})
    out["froc_mean"] = float(np.mean(froc)) if np.isfinite(froc).all() else float("nan")
    return out


def box_bootstrap_rows(matches: BoxMatches, indices: np.ndarray) -> dict[str, np.ndarray]:
    """The headline box metrics on each resample row of ``indices`` [B,N] -> name -> float [B]."""
    idx = np.asarray(indices, dtype=np.int64)
    b = idx.shape[0]
    ap50 = np.empty(b)
    ap = np.empty(b)
    for i in range(b):
        ap50[i], ap[i] = _accumulate(matches, idx[i])
    weights = np.zeros((b, matches.n), dtype=np.int64)
    np.add.at(weights, (np.repeat(np.arange(b), idx.shape[1]), idx.ravel()), 1)
    froc = _froc_rows(matches, weights)
    return {"box_ap50": ap50, "box_ap50_95": ap, "froc_mean": froc.mean(axis=1)}


def box_metrics(
    matches: BoxMatches,
    n_resamples: int = 2000,
    seed: int = 0,
    *,
    box_score: str | None = None,
    source: str = "components",
) -> dict[str, Any]:
    """The ``boxes`` section of a metrics JSON (see the module docstring for definitions).

    Keys: every name of :data:`BOX_METRICS`, ``<headline>_ci95`` for :data:`BOX_HEADLINE`
    (with ``n_resamples`` > 0), n_images, n_gt_boxes, n_pred_boxes, max_dets, hit_rule,
    froc_fp_rates, box_score, source, library, bootstrap, notes.
    """
    from importlib.metadata import version

    point = box_point_estimates(matches)
    body: dict[str, Any] = dict(point)
    notes: list[str] = []
    if int(matches.n_gt.sum()) == 0:
        notes.append("no ground-truth box in this split: AP and FROC are undefined (NaN)")
    capped = int((matches.n_det > MAX_DETS).sum())
    if capped:
        notes.append(f"{capped} images have more than {MAX_DETS} predicted boxes; the lowest-scored are dropped")
    if n_resamples > 0:
        rows = box_bootstrap_rows(matches, stratified_indices(matches.labels, n_resamples, seed))
        for name in BOX_HEADLINE:
            ok = np.isfinite(point[name])
            body[f"{name}_ci95"] = percentile_interval(rows[name]) if ok else [float("nan")] * 2
    body.update({
        "n_images": matches.n,
        "n_gt_boxes": int(matches.n_gt.sum()),
        "n_pred_boxes": int(matches.n_det.sum()),
        "max_dets": MAX_DETS,
        "hit_rule": f"pycocotools matching at IoU >= {HIT_IOU}: each predicted box (by descending score) takes the "
                    "unmatched GT box of highest IoU; unmatched predicted boxes are false positives",
        "froc_fp_rates": list(FROC_FP_RATES),
        "box_score": box_score,
        "source": source,
        "library": f"pycocotools {version('pycocotools')}",
        "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed), "method": "percentile",
                      "stratified_by": "image label", "unit": "image", "level": 0.95},
        "notes": notes,
    })
    return body


def paired_box_delta(a: BoxMatches, b: BoxMatches, n_resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired bootstrap of the headline box metrics, A minus B, on the same images (for ``compare``).

    Same return shape as :func:`fxbench.evaluate.bootstrap.paired_bootstrap_delta`:
    ``{metric: {"a", "b", "delta", "delta_ci95", "share_a_better"}}``.
    """
    if a.image_ids != b.image_ids or not np.array_equal(a.labels, b.labels):
        raise DataError("paired box bootstrap needs the same images (same order, same labels) for A and B")
    if n_resamples < 1:
        raise ConfigError(f"bootstrap resamples must be >= 1, got {n_resamples}")
    idx = stratified_indices(a.labels, n_resamples, seed)
    ra, rb = box_bootstrap_rows(a, idx), box_bootstrap_rows(b, idx)
    pa, pb = box_point_estimates(a), box_point_estimates(b)
    out: dict[str, dict[str, Any]] = {}
    for name in BOX_HEADLINE:
        delta = ra[name] - rb[name]
        finite = delta[np.isfinite(delta)]
        out[name] = {"a": pa[name], "b": pb[name], "delta": pa[name] - pb[name],
                     "delta_ci95": percentile_interval(delta),
                     "share_a_better": float((finite > 0).mean()) if finite.size else float("nan")}
    return out


def box_rows(metrics: Mapping[str, Any]) -> list[tuple[str, float | None, list[float] | None]]:
    """(name, value, ci95 or None) of a metrics JSON's ``boxes`` section, for tables and reports.

    Empty when the metrics have no box section.
    """
    boxes = metrics.get("boxes") or {}
    return [(k, boxes.get(k), boxes.get(f"{k}_ci95")) for k in BOX_METRICS if k in boxes]
