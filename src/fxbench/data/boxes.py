"""Ground-truth boxes: one per fracture, from the archive's box annotations, checked against the polygons.

Frame: FracAtlas' COCO polygons, YOLO labels and PASCAL VOC boxes are all in the native frame
*after* the EXIF transpose (checked on the real archive: for the 90° image IMG0002628 the YOLO
centre normalised by the displayed 454 px width equals the COCO box centre; the VOC <size> is the
displayed size). ``prepare`` writes ``PREP/boxes.json`` in that frame: ``x, y, w, h`` pixels,
top-left corner, continuous coordinates.

Per image, the boxes come from the first of YOLO, VOC whose box count equals the number of
polygons of the rasterized source (the fractures); otherwise from the polygons' vertex extents
(``polygon``). Each chosen annotation box is matched one-to-one (greedy by IoU) with a polygon
extent; an image whose count differs or whose worst matched IoU is below
:data:`CHECK_IOU` is a *box disagreement*, listed in ``prepare_report.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.errors import DataError

BOXES_FILE = "boxes.json"
BOXES_FORMAT = "fxbench-gt-boxes-1"
#: Box annotation sources, in order of preference.
BOX_SOURCE_ORDER = ("yolo", "voc")
#: An annotation box whose best polygon extent overlaps it less than this is a disagreement.
CHECK_IOU = 0.5


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix float64 [N,M] of ``x, y, w, h`` boxes a [N,4] and b [M,4] (0 for empty unions)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + b[:, 2] * b[:, 3] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def polygon_extent(rings: Sequence[Sequence[float]]) -> tuple[float, float, float, float]:
    """``x, y, w, h`` of the vertices of one fracture's rings (flat x0, y0, x1, y1, ...)."""
    xs = [v for ring in rings for v in ring[0::2]]
    ys = [v for ring in rings for v in ring[1::2]]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def annotation_boxes(source: str, entries: Sequence[Any], width: int, height: int) -> np.ndarray | None:
    """Boxes of one image as written by ``source`` -> float64 [K,4] ``x, y, w, h`` pixels,
    or None when an entry is unusable (a VOC object without a box, a negative size).

    ``yolo`` entries are ``cx, cy, w, h`` normalised by the image size, ``voc`` entries
    ``xmin, ymin, xmax, ymax`` pixels.
    """
    out = []
    for e in entries:
        if e is None:
            return None
        a, b, c, d = (float(v) for v in e)
        if source == "yolo":
            w, h = c * width, d * height
            out.append((a * width - w / 2, b * height - h / 2, w, h))
        elif source == "voc":
            out.append((a, b, c - a, d - b))
        else:
            raise ValueError(f"unknown box source {source!r}")
    arr = np.asarray(out, dtype=np.float64).reshape(-1, 4)
    return None if (arr[:, 2:] < 0).any() or not np.isfinite(arr).all() else arr


def greedy_match_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of each one-to-one pair, matched greedily by descending IoU (length min(N, M))."""
    iou = box_iou(a, b)
    pairs: list[float] = []
    while iou.size and len(pairs) < min(iou.shape):
        i, j = np.unravel_index(int(np.argmax(iou)), iou.shape)
        pairs.append(float(iou[i, j]))
        iou[i, :] = -1.0
        iou[:, j] = -1.0
    return np.asarray(pairs)


@dataclass
class ImageBoxes:
    """The ground-truth boxes of one image and how they were chosen."""

    boxes: np.ndarray  # float64 [K,4] x, y, w, h
    source: str  # yolo, voc, polygon or none
    min_iou: float | None = None  # worst polygon-extent IoU of the chosen annotation boxes
    issues: list[str] = field(default_factory=list)


def image_boxes(
    stem: str, coords: dict[str, dict[str, list[Any]]], fractures: Sequence[Sequence[Sequence[float]]],
    width: int, height: int,
) -> ImageBoxes:
    """Choose and check the ground-truth boxes of one image (see the module docstring)."""
    extents = np.asarray([polygon_extent(f) for f in fractures if f], dtype=np.float64).reshape(-1, 4)
    issues: list[str] = []
    chosen: ImageBoxes | None = None
    for source in BOX_SOURCE_ORDER:
        entries = coords.get(source, {}).get(stem)
        if entries is None:
            continue
        boxes = annotation_boxes(source, entries, width, height)
        if boxes is None:
            issues.append(f"{source} has an unusable box")
            continue
        if len(boxes) != len(extents):
            issues.append(f"{source} has {len(boxes)} boxes for {len(extents)} polygons")
            continue
        if chosen is None:
            ious = greedy_match_iou(boxes, extents)
            worst = float(ious.min()) if ious.size else None
            chosen = ImageBoxes(boxes, source, worst)
            if worst is not None and worst < CHECK_IOU:
                issues.append(f"a {source} box overlaps its polygon's extent with IoU {worst:.2f} (< {CHECK_IOU})")
    if chosen is None:
        chosen = ImageBoxes(extents, "polygon" if len(extents) else "none")
        if issues:
            issues.append("boxes taken from the polygon extents")
    chosen.issues = issues
    return chosen


def boxes_document(per_image: dict[str, ImageBoxes]) -> dict[str, Any]:
    """The JSON body of ``PREP/boxes.json`` (every image, negatives with an empty list)."""
    return {
        "format": BOXES_FORMAT,
        "frame": "native pixels after the EXIF transpose (the frame of PREP/masks and of the archive's annotations)",
        "box": "x, y, w, h; x, y = top-left corner; continuous pixel coordinates",
        "boxes": {i: [[round(float(v), 3) for v in b] for b in ib.boxes] for i, ib in sorted(per_image.items())},
        "sources": {i: ib.source for i, ib in sorted(per_image.items()) if ib.source != "none"},
    }


def boxes_summary(per_image: dict[str, ImageBoxes]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(report summary, disagreements list) for ``prepare_report.json``."""
    sources: dict[str, int] = {}
    for ib in per_image.values():
        if len(ib.boxes):
            sources[ib.source] = sources.get(ib.source, 0) + 1
    ious = np.asarray([ib.min_iou for ib in per_image.values() if ib.min_iou is not None])
    disagreements = [
        {"image_id": i, "source": ib.source, "boxes": len(ib.boxes), "min_iou": ib.min_iou, "issues": ib.issues}
        for i, ib in sorted(per_image.items()) if ib.issues
    ]
    summary = {
        "total": int(sum(len(ib.boxes) for ib in per_image.values())),
        "images_with_boxes": int(sum(1 for ib in per_image.values() if len(ib.boxes))),
        "from": dict(sorted(sources.items())),
        "polygon_check_iou": None if not ious.size else {
            "min": round(float(ious.min()), 4), "p05": round(float(np.percentile(ious, 5)), 4),
            "median": round(float(np.median(ious)), 4), "below_check": int((ious < CHECK_IOU).sum()),
        },
        "check_iou": CHECK_IOU,
        "disagreements": len(disagreements),
    }
    return summary, disagreements


def read_gt_boxes(prepared_dir: str | Path) -> dict[str, np.ndarray] | None:
    """``PREP/boxes.json`` -> image_id -> float64 [K,4]; None for a folder prepared before it existed."""
    path = Path(prepared_dir) / BOXES_FILE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in doc["boxes"].items()}
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path} is malformed ({err})", "re-run `fxbench prepare --force`") from err


def gt_boxes_of(meta: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The ground-truth boxes of the prepared folder a predictions artifact names
    (``meta["prepared"]``); None when it names none, is not on this machine, or predates boxes.json."""
    prepared = meta.get("prepared")
    if not prepared or not Path(prepared).is_dir():
        return None
    return read_gt_boxes(prepared)
