"""PNG plots from saved artifacts (matplotlib, Agg, no pyplot global state).

* :func:`plot_roc` / :func:`plot_pr`: presence ROC and precision-recall curves of one or many
  result folders on one split (points from ``fxbench.evaluate.roc_curve`` /
  ``precision_recall_curve``, AUC/AP in the legend from the same module).
* :func:`plot_calibration`: reliability diagram of the presence score (equal-width bins from
  ``fxbench.evaluate.calibration_bins``) with the score histogram below.
* :func:`plot_training`: losses, val metrics and learning rate from ``RUN/history.csv``.
* :func:`plot_threshold_curve`: val metrics against the pixel threshold from ``tune/grid.csv``.
* :func:`plot_overlays`: best or worst positive cases by per-image Dice at the frozen operating
  point: the X-ray (from a prepared cache of any size; without one, the probability map with a
  colour bar, and the title says so), ground truth contour (green) and prediction (red contour
  over a light red fill).

Every figure is rendered into memory and written atomically.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fxbench.io import write_bytes_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from fxbench.artifacts.predictions import Predictions

DPI = 110
GT_COLOUR = "#2ca02c"
PRED_COLOUR = "#d62728"
PRED_ON_MAP = "#00e5ff"


def _figure(width: float, height: float) -> Figure:
    # Figure() without pyplot: no global backend switch, safe in library code and threads.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Render ``fig`` as PNG and write it atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes_atomic(path, buf.getvalue())
    return Path(path)


def _label(name: str, value: float, what: str) -> str:
    return f"{name} ({what} {value:.3f})" if not math.isnan(value) else f"{name} ({what} n/a)"


def plot_roc(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str = "Presence ROC") -> Path:
    """ROC curves; ``curves`` holds (name, scores [N], labels [N]) per entry."""
    from fxbench.evaluate import roc_auc, roc_curve

    fig = _figure(5.2, 5.0)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    for name, scores, labels in curves:
        c = roc_curve(scores, labels)
        ax.step(c["fpr"], c["tpr"], where="post", lw=1.5, label=_label(name, roc_auc(scores, labels), "AUC"))
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower right", fontsize=8)
    return save_figure(fig, path)


def plot_pr(curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str = "Presence precision-recall") -> Path:
    """Precision-recall curves (step-wise, as AP integrates them) with the prevalence line."""
    from fxbench.evaluate import average_precision, precision_recall_curve

    fig = _figure(5.2, 5.0)
    ax = fig.add_subplot()
    for name, scores, labels in curves:
        c = precision_recall_curve(scores, labels)
        ax.step(np.r_[0.0, c["recall"]], np.r_[1.0, c["precision"]], where="pre", lw=1.5,
                label=_label(name, average_precision(scores, labels), "AP"))
    if curves:
        prevalence = float(np.mean(np.asarray(curves[0][2]) > 0))
        ax.axhline(prevalence, ls=":", c="grey", lw=1, label=f"prevalence {prevalence:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


def plot_calibration(
    curves: Sequence[tuple[str, np.ndarray, np.ndarray]], path: str | Path, n_bins: int = 10,
    title: str = "Presence calibration",
) -> Path:
    """Reliability diagram (fraction positive vs mean score per bin) and score histograms."""
    from fxbench.evaluate import brier_score, calibration_bins

    fig = _figure(5.2, 6.2)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
    edges = np.linspace(0, 1, n_bins + 1)
    for name, scores, labels in curves:
        s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
        b = calibration_bins(s, labels, n_bins)
        ok = b["count"] > 0
        line = top.plot(b["mean_score"][ok], b["fraction_positive"][ok], marker="o", ms=4, lw=1.2,
                        label=_label(name, brier_score(s, labels), "Brier"))[0]
        if len(curves) == 1:  # how many images each point stands on (a point of 1 image is noise)
            for xv, yv, n in zip(b["mean_score"][ok], b["fraction_positive"][ok], b["count"][ok], strict=True):
                top.annotate(f"n={int(n)}", (xv, yv), textcoords="offset points", xytext=(4, -10), fontsize=7,
                             color=line.get_color())
        bottom.hist(s, bins=edges, histtype="step", lw=1.2)
    top.set(ylabel="fraction with fracture", xlim=(0, 1), ylim=(0, 1.01), title=title)
    top.legend(loc="upper left", fontsize=8)
    bottom.set(xlabel="presence score", ylabel="images")
    return save_figure(fig, path)


def read_history(path: str | Path) -> dict[str, np.ndarray]:
    """``history.csv`` as float columns (blank cells -> NaN)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    cols: dict[str, np.ndarray] = {}
    for key in rows[0] if rows else []:
        vals = []
        for r in rows:
            try:
                vals.append(float(r[key]))
            except (TypeError, ValueError):
                vals.append(float("nan"))
        cols[key] = np.array(vals)
    return cols


def plot_training(history_csv: str | Path, path: str | Path, title: str = "Training",
                  selection_metric: str | None = None, best_epoch: int | None = None) -> Path | None:
    """Loss, val metrics and learning rate per epoch; None when the history is empty.

    One star marks the epoch whose checkpoint is ``best.pt`` (``best_epoch``, else the last
    epoch flagged ``best`` in the history) on the curve of ``selection_metric`` (the ``selection``
    column when that metric is not one of the drawn curves). Legends sit below the axes, so they
    never cover a curve; a one-epoch history gets integer ticks and points instead of lines.
    """
    h = read_history(history_csv)
    if not h or "epoch" not in h or not len(h["epoch"]):
        return None
    x = h["epoch"]
    fig = _figure(10.5, 4.2)
    ax_loss, ax_val, ax_lr = fig.subplots(1, 3)
    for key in ("train_loss", "val_loss"):
        if key in h and np.isfinite(h[key]).any():
            ax_loss.plot(x, h[key], marker=".", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    curves: dict[str, np.ndarray] = {}
    for key in ("val_dice_pos", "val_iou_pos", "val_roc_auc_presence", "val_average_precision_presence"):
        if key in h and np.isfinite(h[key]).any():
            ax_val.plot(x, h[key], marker=".", label=key.removeprefix("val_"))
            curves[key.removeprefix("val_")] = h[key]
    metric = selection_metric or "dice_pos"
    sel = curves.get(metric)
    if sel is None and "selection" in h and np.isfinite(h["selection"]).any():
        sel = h["selection"]
        ax_val.plot(x, sel, marker=".", ls="--", c="k", lw=1, label=f"{metric} (selection)")
    if best_epoch is None and "best" in h and (h["best"] > 0).any():
        best_epoch = int(x[np.flatnonzero(h["best"] > 0)[-1]])
    if sel is not None and best_epoch is not None and (x == best_epoch).any():
        k = int(np.flatnonzero(x == best_epoch)[0])
        ax_val.scatter([x[k]], [sel[k]], marker="*", s=90, c="k", zorder=3,
                       label=f"best.pt: epoch {best_epoch} ({metric} {sel[k]:.3f})")
    ax_val.set(xlabel="epoch", ylabel="val metric", ylim=(0, 1), title=f"validation (selection: {metric})")
    if "lr" in h and np.isfinite(h["lr"]).any():
        ax_lr.plot(x, h["lr"], c="tab:purple", marker="." if len(x) < 3 else None)
        if np.nanmin(h["lr"]) > 0 and np.nanmax(h["lr"]) > np.nanmin(h["lr"]):
            ax_lr.set_yscale("log")
    else:
        ax_lr.text(0.5, 0.5, "no learning rate in history.csv", ha="center", va="center",
                   transform=ax_lr.transAxes, fontsize=8, c="grey")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="schedule")
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    for ax in (ax_loss, ax_val, ax_lr):
        if hi - lo < 1:  # one epoch: not a 0.96-1.04 axis
            ax.set_xlim(lo - 1, hi + 1)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in (ax_loss, ax_val):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False)
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_threshold_curve(grid_csv: str | Path, path: str | Path, chosen: float | None = None,
                         title: str = "Val metrics vs pixel threshold", min_component: int = 0) -> Path | None:
    """Metrics of ``tune/grid.csv`` against the threshold, at ``min_component`` (the decision's;
    the 0 rows when the grid has none for it), with ``chosen`` (decision.json's threshold) marked."""
    h = read_history(grid_csv)
    if not h or "threshold" not in h:
        return None
    mc = h.get("min_component", np.zeros_like(h["threshold"]))
    if not (mc == min_component).any():
        min_component = 0
    keep = mc == min_component
    fig = _figure(5.6, 4.4)
    ax = fig.add_subplot()
    for key in ("dice_pos", "iou_pos", "dice", "precision_pos", "recall_pos"):
        if key in h:
            ax.plot(h["threshold"][keep], h[key][keep], marker=".", label=key)
    if chosen is not None:
        ax.axvline(chosen, c="k", ls="--", lw=1, label=f"decision.json threshold {chosen:g}")
    note = f", min_component {min_component}" if min_component else ""
    ax.set(xlabel="pixel threshold", ylabel="val metric", ylim=(0, 1), title=title + note)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
    return save_figure(fig, path)


def select_cases(
    pred: Predictions, decision: dict[str, Any], which: str = "worst", k: int = 8
) -> list[tuple[int, float]]:
    """(index, dice) of the ``k`` best or worst fracture-positive images at the operating point.

    Per-image Dice comes from ``fxbench.evaluate.compute_per_image_stats``; ties keep id order
    (reversed for the worst). With fewer than ``2k`` positives the two sets split them (best: the upper ceil(n/2),
    worst: the rest), so no image appears in both grids.
    """
    from fxbench.evaluate import compute_per_image_stats

    stats = compute_per_image_stats(pred, decision, "cache", lesions=False)
    pos = np.flatnonzero(stats.gt_positive)
    if not len(pos):
        return []
    dice = stats.dice[pos]
    n_best = min(k, math.ceil(len(pos) / 2)) if len(pos) < 2 * k else k
    n = n_best if which == "best" else min(k, len(pos) - n_best)
    order = np.argsort(-dice, kind="stable")  # best first, ties in id order
    if which != "best":  # the same order read from its far end: the two sets never overlap
        order = order[::-1]
    return [(int(pos[i]), float(dice[i])) for i in order[:n]]


def _grid(n: int) -> tuple[int, int]:
    """(rows, cols) for ``n`` tiles, at most 4 per row, without a row of mostly empty cells."""
    if n <= 4:
        return 1, n
    rows = math.ceil(n / 4)
    return rows, math.ceil(n / rows)


def _square(image: np.ndarray, size: int) -> np.ndarray:
    """A cache image [S',S'] brought to the artifact's edge ``size`` (bilinear; same letterbox frame)."""
    if image.shape[-1] == size:
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(image, np.uint8)).resize((size, size), Image.Resampling.BILINEAR))


def plot_overlays(
    pred: Predictions,
    decision: dict[str, Any],
    path: str | Path,
    which: str = "worst",
    k: int = 8,
    images: np.ndarray | Callable[[list[int]], np.ndarray | None] | None = None,
    title: str | None = None,
    image_note: str | None = None,
) -> tuple[Path, list[dict[str, Any]]] | None:
    """Grid of cases: grey X-ray, GT contour green, prediction red (contour + light fill).

    ``images``: the cache images [N,S',S'] aligned with ``pred``, or a function giving the rows
    for a list of indices (any square size S': resized to the artifact's size), or None. Without
    images the tile shows the probability map with a colour bar, and the title says so. Each tile
    is cropped to the letterbox box. Returns (path, [{image_id, dice}...]) or None when no
    positive image is left for ``which``.
    """
    from matplotlib.colors import ListedColormap

    from fxbench.evaluate import threshold_probs

    cases = select_cases(pred, decision, which, k)
    if not cases:
        return None
    idx = [i for i, _ in cases]
    tiles = images(idx) if callable(images) else (None if images is None else np.asarray(images)[idx])
    rows, cols = _grid(len(cases))
    fig = _figure(2.6 * cols, 2.8 * rows + 0.3)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    thr = float(decision["threshold"])
    colour = PRED_COLOUR if tiles is not None else PRED_ON_MAP  # red vanishes on the magma map
    colours: list[tuple[float, float, float, float] | str] = [(0, 0, 0, 0), colour]  # transparent, then colour
    fill = ListedColormap(colours)
    for ax in axes:
        ax.set_axis_off()
    shown = None
    for n, (ax, (i, dice)) in enumerate(zip(axes, cases, strict=False)):
        top, left, h, w = (int(v) for v in pred.boxes[i])
        if h <= 0 or w <= 0:  # artifacts without geometry: show the whole square
            top, left, h, w = 0, 0, pred.size, pred.size
        crop = (slice(top, top + h), slice(left, left + w))
        if tiles is not None:
            ax.imshow(_square(tiles[n], pred.size)[crop], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        else:
            shown = ax.imshow(pred.probs[i][crop].astype(np.float32), cmap="magma", vmin=0, vmax=1,
                              interpolation="nearest")
        gt = pred.masks[i][crop] > 0
        pm = threshold_probs(pred.probs[i][crop], thr)
        if pm.any():
            ax.imshow(pm.astype(np.float32), cmap=fill, vmin=0, vmax=1, alpha=0.35, interpolation="nearest")
        if gt.any():
            ax.contour(gt.astype(np.float32), levels=[0.5], colors=[GT_COLOUR], linewidths=1.0)
        if pm.any() and pm.shape[0] > 1 and pm.shape[1] > 1:
            ax.contour(pm.astype(np.float32), levels=[0.5], colors=[colour], linewidths=1.0)
        ax.set_title(f"{pred.image_ids[i]}\nDice {dice:.3f}", fontsize=7)
    what = "best" if which == "best" else "worst"
    name = "red" if tiles is not None else "cyan"
    head = title or f"{what} {len(cases)} fracture cases (green: truth, {name}: prediction at threshold {thr:g})"
    if tiles is None:
        head += "\nbackground: predicted PROBABILITY MAP, not the X-ray" + (f" ({image_note})" if image_note else "")
        if shown is not None:
            fig.colorbar(shown, ax=list(axes), shrink=0.6, label="fracture probability")
    fig.suptitle(head, fontsize=9)
    return save_figure(fig, path), [{"image_id": pred.image_ids[i], "dice": dice} for i, dice in cases]
