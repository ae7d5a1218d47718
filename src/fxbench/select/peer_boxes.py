"""Peer box predictions: score YOLO txt folders and COCO results JSON with fxbench's box metrics.

Formats (what detectors write):

* **YOLO txt** (Ultralytics ``save_txt=True, save_conf=True``): one ``<stem>.txt`` per image,
  one line per box ``class cx cy w h conf``, coordinates normalised by the image width/height.
  An image without a file has no box (Ultralytics writes no file then). A line without ``conf``
  scores 1.0 (noted). Every class counts as fracture (FracAtlas has one).
* **COCO results JSON**: a list of ``{"image_id", "bbox": [x, y, w, h] pixels, "score"}``.
  ``image_id`` is a file name or stem (``IMG0000019.jpg``, ``IMG0000019``: what Ultralytics'
  ``save_json`` writes for such names), or an integer matched to the digits of the stem
  (``19`` -> ``IMG0000019``); a record may also carry ``file_name``.

Frame (``frame``): ``exif`` (default) = the displayed frame after the EXIF transpose, the frame of
FracAtlas' own COCO/YOLO/VOC annotations and of anything that reads images with the orientation
applied (Ultralytics, PIL ``exif_transpose``, OpenCV ``imread``); ``stored`` = the raw pixel
grid of the JPEG, for tools that ignore EXIF. Stored-frame boxes are mapped into the EXIF frame
with the image's orientation from the manifest (25 images of the real archive have one).

Scores: the box metrics of :mod:`fxbench.evaluate.boxes` against ``PREP/boxes.json``, plus the
presence metrics of the image score = the highest box confidence (0 for an image without box).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.errors import DataError, UsageError
from fxbench.io import write_json_atomic
from fxbench.select.peers import SPLITS, read_manifest

FRAMES = ("exif", "stored")
Detections = dict[str, tuple[np.ndarray, np.ndarray]]


@dataclass
class BoxPredictions:
    """One split's peer boxes (what the seal scores): image_id -> ([K,4] x,y,w,h, [K] scores)."""

    image_ids: list[str]
    labels: np.ndarray  # bool [N]
    detections: Detections
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def image_score(self) -> np.ndarray:
        """float64 [N]: the highest box confidence per image, 0 without a box."""
        return np.array([float(np.max(self.detections[i][1])) if len(self.detections[i][1]) else 0.0
                         for i in self.image_ids])


# --------------------------------------------------------------------------------------
# frames


def stored_to_exif(boxes: np.ndarray, orientation: int, stored_wh: tuple[float, float]) -> np.ndarray:
    """Map ``x, y, w, h`` boxes [K,4] from the stored JPEG grid into the EXIF-transposed frame.

    ``stored_wh`` is the stored (width, height). Orientation codes follow EXIF / PIL
    ``ImageOps.exif_transpose`` (6 = rotate 90° clockwise to display, 8 = counter-clockwise).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if orientation in (0, 1) or not b.size:
        return b
    ws, hs = stored_wh
    x0, y0, x1, y1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    maps = {
        2: lambda x, y: (ws - x, y),
        3: lambda x, y: (ws - x, hs - y),
        4: lambda x, y: (x, hs - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (hs - y, x),
        7: lambda x, y: (hs - y, ws - x),
        8: lambda x, y: (y, ws - x),
    }
    if orientation not in maps:
        raise DataError(f"unknown EXIF orientation {orientation}")
    ax, ay = maps[orientation](x0, y0)
    bx, by = maps[orientation](x1, y1)
    nx0, nx1 = np.minimum(ax, bx), np.maximum(ax, bx)
    ny0, ny1 = np.minimum(ay, by), np.maximum(ay, by)
    return np.stack([nx0, ny0, nx1 - nx0, ny1 - ny0], axis=1)


def _stored_size(row: Mapping[str, str]) -> tuple[float, float]:
    """(width, height) of the stored JPEG grid (the manifest has the transposed size)."""
    w, h = float(row["width"]), float(row["height"])
    return (h, w) if _orientation(row) in (5, 6, 7, 8) else (w, h)


def _orientation(row: Mapping[str, str]) -> int:
    try:
        return int(row.get("exif_orientation") or 1)
    except ValueError:
        return 1


def _to_exif(boxes: np.ndarray, row: Mapping[str, str], frame: str) -> np.ndarray:
    return stored_to_exif(boxes, _orientation(row), _stored_size(row)) if frame == "stored" else boxes


# --------------------------------------------------------------------------------------
# readers


def _split_rows(prepared_dir: Path, split: str) -> list[dict[str, str]]:
    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'", "use train, val or test")
    rows = sorted((r for r in read_manifest(prepared_dir) if r["split"] == split), key=lambda r: r["image_id"])
    if not rows:
        raise DataError(f"split '{split}' of {prepared_dir} has no images")
    return rows


def read_yolo_folder(folder: str | Path, rows: list[dict[str, str]], frame: str = "exif") -> tuple[Detections, list[str]]:
    """YOLO txt predictions of ``rows`` -> (detections in the EXIF frame, notes)."""
    folder = Path(folder)
    notes: list[str] = []
    det: Detections = {}
    found = no_conf = 0
    for row in rows:
        stem = Path(row["image_id"]).stem
        path = folder / f"{stem}.txt"
        boxes: list[list[float]] = []
        scores: list[float] = []
        if path.is_file():
            found += 1
            for n, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), start=1):
                parts = line.split()
                if not parts:
                    continue
                try:
                    values = [float(p) for p in parts]
                except ValueError as err:
                    raise DataError(f"{path}:{n}: not a number in {line.strip()!r}") from err
                if len(values) not in (5, 6) or not all(math.isfinite(v) for v in values):
                    raise DataError(f"{path}:{n}: expected 'class cx cy w h conf' (5 or 6 numbers), got {len(values)}",
                                    "write detection boxes (save_txt=True, save_conf=True), not segmentation polygons")
                cx, cy, w, h = values[1:5]
                if len(values) == 5:
                    no_conf += 1
                scores.append(values[5] if len(values) == 6 else 1.0)
                width, height = _stored_size(row) if frame == "stored" else (float(row["width"]), float(row["height"]))
                boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, w * width, h * height])
        arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        det[row["image_id"]] = (_to_exif(arr, row, frame), np.asarray(scores, dtype=np.float64))
    if found == 0:
        raise DataError(f"{folder} has no YOLO txt file for any of the {len(rows)} images of the split",
                        "point --predictions at the labels/ folder Ultralytics wrote (save_txt=True)")
    stems = {Path(r["image_id"]).stem for r in rows}
    outside = sum(1 for f in folder.glob("*.txt") if f.stem not in stems)
    if outside:
        notes.append(f"{outside} YOLO txt files name images outside this split; ignored")
    if no_conf:
        notes.append(f"{no_conf} YOLO boxes have no confidence and score 1.0 (AP then ranks them as ties)")
    return det, notes


_DIGITS = re.compile(r"(\d+)$")


def read_coco_results(path: str | Path, rows: list[dict[str, str]], frame: str = "exif") -> tuple[Detections, list[str]]:
    """COCO results JSON predictions of ``rows`` -> (detections in the EXIF frame, notes).

    Records of images outside ``rows`` (another split) are ignored and counted in the notes.
    """
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read COCO results {path} ({err})", "pass a JSON list of {image_id, bbox, score}") from err
    if isinstance(records, dict) and "annotations" in records:
        records = records["annotations"]
    if not isinstance(records, list):
        raise DataError(f"{path} is not a COCO results list", "pass a JSON list of {image_id, bbox, score}")
    by_key: dict[str, dict[str, str]] = {}
    by_number: dict[int, list[dict[str, str]]] = {}
    for r in rows:
        by_key[r["image_id"]] = by_key[Path(r["image_id"]).stem] = r
        m = _DIGITS.search(Path(r["image_id"]).stem)
        if m:
            by_number.setdefault(int(m.group(1)), []).append(r)
    acc: dict[str, tuple[list[list[float]], list[float]]] = {r["image_id"]: ([], []) for r in rows}
    outside = 0
    for n, rec in enumerate(records):
        if not isinstance(rec, dict) or "bbox" not in rec or ("image_id" not in rec and "file_name" not in rec):
            raise DataError(f"{path}: record {n} lacks image_id/file_name or bbox", "each record needs image_id, bbox, score")
        key = rec.get("file_name", rec.get("image_id"))
        row: dict[str, str] | None
        if isinstance(key, bool) or not isinstance(key, (int, str)):
            raise DataError(f"{path}: record {n} has image_id {key!r}; expected a file name or an integer")
        if isinstance(key, int):
            hits = by_number.get(key, [])
            if len(hits) > 1:
                raise DataError(f"{path}: integer image_id {key} matches {len(hits)} images", "use file names as image_id")
            row = hits[0] if hits else None
        else:
            row = by_key.get(Path(key).name) or by_key.get(Path(key).stem)
        if row is None:
            outside += 1
            continue
        try:
            bbox = [float(v) for v in rec["bbox"]]
            score = float(rec.get("score", 1.0))
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: record {n} has a non-numeric bbox or score") from err
        if len(bbox) != 4 or not all(math.isfinite(v) for v in [*bbox, score]) or bbox[2] < 0 or bbox[3] < 0:
            raise DataError(f"{path}: record {n} bbox must be 4 finite numbers x, y, w, h with w, h >= 0")
        acc[row["image_id"]][0].append(bbox)
        acc[row["image_id"]][1].append(score)
    notes = [f"{outside} COCO records name images outside this split; ignored"] if outside else []
    by_id = {r["image_id"]: r for r in rows}
    det: Detections = {
        i: (_to_exif(np.asarray(b, dtype=np.float64).reshape(-1, 4), by_id[i], frame), np.asarray(s, dtype=np.float64))
        for i, (b, s) in acc.items()
    }
    return det, notes


def detect_format(path: str | Path) -> str:
    """``coco`` for a .json file, ``yolo`` for a folder of .txt files, ``masks`` for PNG masks."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() == ".json":
        return "coco"
    if path.is_dir():
        has_txt = any(path.glob("*.txt"))
        has_png = any(path.glob("*.png"))
        if has_txt and has_png:
            raise DataError(f"{path} holds both .txt and .png files", "keep YOLO txt and mask PNGs in separate folders")
        if not has_txt and not has_png and any((path / "labels").glob("*.txt")):
            raise DataError(f"{path} holds no predictions, but {path / 'labels'} has YOLO txt files",
                            f"pass --predictions {path / 'labels'}")
        return "yolo" if has_txt else "masks"
    raise DataError(f"predictions not found: {path}", "pass a folder of masks or YOLO txt files, or a COCO results .json")


def load_box_predictions(path: str | Path, prepared_dir: str | Path, split: str, frame: str = "exif",
                         fmt: str | None = None) -> BoxPredictions:
    """Read YOLO txt or COCO results for ``split`` of a prepared folder (see the module docstring)."""
    if frame not in FRAMES:
        raise UsageError(f"--frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    prep = Path(prepared_dir)
    fmt = fmt or detect_format(path)
    rows = _split_rows(prep, split)
    if fmt == "yolo":
        det, notes = read_yolo_folder(path, rows, frame)
    elif fmt == "coco":
        det, notes = read_coco_results(path, rows, frame)
    else:
        raise UsageError(f"unknown box format {fmt!r}", "use yolo or coco")
    labels = np.array([int(r.get("label") or 0) for r in rows], dtype=bool)
    from fxbench.select.peers import _split_sha256

    meta = {"split": split, "kind": "peer", "format": fmt, "frame": frame, "run": Path(path).name,
            "source": str(Path(path).resolve()), "prepared": str(prep.resolve()),
            "split_sha256": _split_sha256(prep), "notes": notes}
    return BoxPredictions([r["image_id"] for r in rows], labels, det, meta)


# --------------------------------------------------------------------------------------
# scoring


def box_peer_decision(presence_threshold: float = 0.5) -> Any:
    """The fixed operating point of box peers: nothing is tuned (source ``user-fixed``).

    ``threshold`` is unused by box scoring (boxes come thresholded); presence is the highest
    box confidence, positive at ``presence_threshold``.
    """
    from fxbench.artifacts.decision import Decision

    return Decision(threshold=0.5, presence_source="max_box_confidence", presence_threshold=float(presence_threshold),
                    min_component=0, tta="none", selected_on="user", source="user-fixed", kind="peer")


def score_box_predictions(pred: BoxPredictions, gt_boxes: Mapping[str, np.ndarray], presence_threshold: float = 0.5,
                          bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Metrics of peer boxes: presence (image score = highest confidence) plus the ``boxes`` section."""
    from fxbench.evaluate import bootstrap_ci, presence_metrics
    from fxbench.evaluate.boxes import box_metrics, match_boxes
    from fxbench.evaluate.metrics import PerImageStats

    missing = [i for i in pred.image_ids if i not in gt_boxes]
    if missing:
        raise DataError(f"boxes.json has no entry for {len(missing)} images (first: {missing[0]})",
                        "re-run `fxbench prepare` on this folder")
    scores = pred.image_score
    pres = presence_metrics(scores, pred.labels, presence_threshold)
    notes = list(pres.pop("notes")) + list(pred.meta.get("notes", []))
    n = len(pred.image_ids)
    zeros = np.zeros(n, dtype=np.int64)
    stats = PerImageStats(image_ids=list(pred.image_ids), gt_positive=pred.labels, inter=zeros, pred_area=zeros,
                          gt_area=zeros, dice=np.zeros(n), iou=np.zeros(n), n_lesions=zeros, n_hit=zeros,
                          n_hit_iou10=zeros, n_pred=zeros, n_fp=zeros, has_lesions=False, presence=scores,
                          labels=pred.labels)
    presence_ci = ["roc_auc_presence", "average_precision_presence", "sensitivity_at_spec90"]
    cis = bootstrap_ci(stats, bootstrap, seed, presence_ci) if bootstrap > 0 else {}
    matches = match_boxes(pred.image_ids, pred.labels, gt_boxes, pred.detections)
    boxes = box_metrics(matches, bootstrap, seed, box_score="peer confidence",
                        source=f"peer {pred.meta.get('format')} boxes, {pred.meta.get('frame')} frame")
    return {
        "split": pred.meta.get("split"), "kind": "peer", "run": pred.meta.get("run"),
        "format": pred.meta.get("format"), "frame": pred.meta.get("frame"), "source_path": pred.meta.get("source"),
        "n": n, "num_positive": int(pred.labels.sum()), "num_negative": int((~pred.labels).sum()),
        "presence_source": "max_box_confidence", "presence_threshold": float(presence_threshold),
        **pres, **cis, "boxes": boxes,
        "bootstrap": {"n_resamples": int(bootstrap), "seed": int(seed), "method": "percentile",
                      "stratified_by": "image label", "unit": "image", "level": 0.95},
        "split_sha256": pred.meta.get("split_sha256"),
        "notes": notes + ["box peer: no masks, so no segmentation metrics; presence = highest box confidence"],
    }


def score_peer_boxes(
    path: str | Path,
    prepared_dir: str | Path,
    split: str,
    *,
    out_dir: str | Path,
    frame: str = "exif",
    fmt: str | None = None,
    presence_threshold: float = 0.5,
    bootstrap: int = 2000,
    seed: int = 0,
    command: str = "fxbench eval --predictions",
) -> dict[str, Any]:
    """Score YOLO txt / COCO results on ``split``; records ``out_dir/metrics/<split>.json``.

    The test split goes through :func:`fxbench.select.seal.score_under_seal` (``kind="peer"``),
    so every test scoring is logged in ``out_dir/test_access.log``.
    """
    from fxbench.data.boxes import read_gt_boxes

    prep = Path(prepared_dir)
    gt = read_gt_boxes(prep)
    if gt is None:
        raise DataError(f"{prep} has no boxes.json (prepared before box metrics existed)",
                        f"re-run `fxbench prepare --out {prep}` (no image is decoded again)")
    pred = load_box_predictions(path, prep, split, frame, fmt)
    decision = box_peer_decision(presence_threshold)

    def score(p: BoxPredictions, d: Any) -> dict[str, Any]:
        return score_box_predictions(p, gt, d.presence_threshold, bootstrap, seed)

    out = Path(out_dir)
    from fxbench.artifacts.decision import write_decision

    write_decision(out / "decision.json", decision)
    if split == "test":
        from fxbench.select.seal import score_under_seal

        # The seal checks pred.meta["split"]; the scorer is ours, so boxes need no Predictions artifact.
        return score_under_seal(out, pred, kind="peer", command=command, decision=decision,
                                scorer=score, extra={"source_dir": str(Path(path).resolve())})
    metrics = score(pred, decision)
    write_json_atomic(out / "metrics" / f"{split}.json", metrics)
    return metrics
