"""Box metrics (pycocotools AP, FROC), ground-truth boxes in prepare, YOLO/COCO peers, export yolo."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fxbench.cli.app import app
from fxbench.data.boxes import image_boxes, read_gt_boxes
from fxbench.errors import DataError
from fxbench.evaluate.boxes import (
    FROC_FP_RATES,
    box_metrics,
    box_point_estimates,
    component_boxes,
    froc_key,
    match_boxes,
    paired_box_delta,
)
from fxbench.select.peer_boxes import read_coco_results, stored_to_exif

runner = CliRunner()
FROC_KEYS = [froc_key(r) for r in FROC_FP_RATES]


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A prepared synthetic archive (small images, half positive, one 32 px cache)."""
    from fxbench.data.prepare import prepare
    from fxbench.data.synthetic import make_synthetic_archive

    root = tmp_path_factory.mktemp("boxes")
    archive = make_synthetic_archive(root / "archive", n_images=32, seed=5, positive_fraction=0.5, scale=0.1)
    prepare(archive, root / "prep", split_mode="grouped", seed=42, cache_sizes=(32,), cache_format="raw", workers=1)
    return root / "prep"


def manifest(prep: Path, split: str | None = None) -> list[dict[str, str]]:
    with open(prep / "manifest.csv", newline="") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["image_id"])
    return [r for r in rows if split is None or r["split"] == split]


def write_yolo(folder: Path, prep: Path, split: str, shift: float = 0.0, conf: float = 1.0) -> None:
    """The ground-truth boxes of ``split`` as Ultralytics txt (x shifted by ``shift`` box widths;
    a shifted box that would overlap another GT box of its image at IoU >= 0.5 is left out)."""
    from fxbench.data.boxes import box_iou

    gt = read_gt_boxes(prep)
    assert gt is not None
    folder.mkdir(parents=True, exist_ok=True)
    for row in manifest(prep, split):
        w, h = float(row["width"]), float(row["height"])
        boxes = gt[row["image_id"]].copy()
        boxes[:, 0] += shift * boxes[:, 2]
        if shift and len(boxes):
            boxes = boxes[box_iou(boxes, gt[row["image_id"]]).max(axis=1) < 0.5]
        lines = [f"0 {(x + bw / 2) / w:.7f} {(y + bh / 2) / h:.7f} {bw / w:.7f} {bh / h:.7f} {conf}"
                 for x, y, bw, bh in boxes]
        if lines:  # like Ultralytics: no file for an image without a box
            (folder / f"{Path(row['image_id']).stem}.txt").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------------
# ground-truth boxes


def test_prepare_writes_gt_boxes_that_match_the_polygons(prep: Path) -> None:
    report = json.loads((prep / "prepare_report.json").read_text())
    gt = read_gt_boxes(prep)
    assert gt is not None and set(gt) == {r["image_id"] for r in manifest(prep)}
    rows = manifest(prep)
    assert all(len(gt[r["image_id"]]) == int(r["fracture_count"] or 0) for r in rows)
    assert all((len(gt[r["image_id"]]) > 0) == (r["label"] == "1") for r in rows)
    summary = report["gt_boxes"]
    assert summary["total"] == sum(len(v) for v in gt.values()) and summary["from"] == {"yolo": summary["images_with_boxes"]}
    assert summary["disagreements"] == 0 and report["box_disagreements"] == []
    assert summary["polygon_check_iou"]["min"] > 0.99


def test_box_disagreements_are_reported_and_fall_back() -> None:
    square = [[10.0, 10.0, 30.0, 10.0, 30.0, 20.0, 10.0, 20.0]]  # extent x 10-30, y 10-20
    coords = {"yolo": {"a": [(0.2, 0.15, 0.2, 0.1), (0.5, 0.5, 0.1, 0.1)]},  # two boxes for one polygon
              "voc": {"a": [(10.0, 10.0, 30.0, 20.0)]}}
    got = image_boxes("a", coords, [square], 100, 100)
    assert got.source == "voc" and got.min_iou == pytest.approx(1.0)
    assert got.issues == ["yolo has 2 boxes for 1 polygons"]
    moved = {"yolo": {"a": [(0.8, 0.8, 0.2, 0.1)]}}  # one box, far from its polygon
    got = image_boxes("a", moved, [square], 100, 100)
    assert got.source == "yolo" and got.min_iou == 0.0 and "IoU 0.00" in got.issues[0]
    got = image_boxes("a", {}, [square], 100, 100)
    assert got.source == "polygon" and got.boxes.tolist() == [[10.0, 10.0, 20.0, 10.0]] and not got.issues


# --------------------------------------------------------------------------------------
# metrics


def _reference_coco(ids: list[str], gt: dict, det: dict) -> tuple[float, float]:
    """Plain pycocotools, the documented way: COCO GT, loadRes, evaluate/accumulate/summarize."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    anns = [{"id": n + 1, "image_id": ids.index(i) + 1, "category_id": 1, "bbox": list(map(float, b)),
             "area": float(b[2] * b[3]), "iscrowd": 0}
            for n, (i, b) in enumerate((i, b) for i in ids for b in gt.get(i, []))]
    res = [{"image_id": ids.index(i) + 1, "category_id": 1, "bbox": list(map(float, b)), "score": float(s)}
           for i in ids for b, s in zip(*det.get(i, ([], [])), strict=True)]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": [{"id": k + 1} for k in range(len(ids))], "annotations": anns,
                        "categories": [{"id": 1, "name": "fracture"}]}
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(res), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1]), float(ev.stats[0])


def test_random_boxes_give_what_pycocotools_gives() -> None:
    rng = np.random.default_rng(7)
    ids = [f"IMG{k:07d}.jpg" for k in range(40)]
    labels = rng.random(40) < 0.4
    gt = {i: np.hstack([rng.uniform(0, 200, (n, 2)), rng.uniform(5, 50, (n, 2))])
          for i, pos in zip(ids, labels, strict=True) if pos for n in [int(rng.integers(1, 4))]}
    det = {}
    for i in ids:
        n = int(rng.integers(0, 6))
        boxes = np.hstack([rng.uniform(0, 200, (n, 2)), rng.uniform(5, 50, (n, 2))])
        if i in gt:  # near-misses and hits so AP is neither 0 nor 1
            boxes = np.vstack([boxes, gt[i] + np.hstack([rng.normal(0, 4, (len(gt[i]), 2)), np.zeros((len(gt[i]), 2))])])
        det[i] = (boxes, rng.random(len(boxes)))
    matches = match_boxes(ids, labels, gt, det)
    ours = box_point_estimates(matches)
    ap50, ap = _reference_coco(ids, gt, det)
    assert 0.05 < ap50 < 0.95
    assert ours["box_ap50"] == pytest.approx(ap50, abs=1e-12)
    assert ours["box_ap50_95"] == pytest.approx(ap, abs=1e-12)
    # Each bootstrap resample equals plain pycocotools on the resampled images (repeats as new images).
    from fxbench.evaluate.bootstrap import stratified_indices
    from fxbench.evaluate.boxes import box_bootstrap_rows

    idx = stratified_indices(labels, 3, seed=11)
    rows = box_bootstrap_rows(matches, idx)
    for r in range(3):
        draw = [f"{k}:{ids[i]}" for k, i in enumerate(idx[r])]
        gt_r = {d: gt[d.split(":", 1)[1]] for d in draw if d.split(":", 1)[1] in gt}
        det_r = {d: det[d.split(":", 1)[1]] for d in draw}
        ref50, ref = _reference_coco(draw, gt_r, det_r)
        assert rows["box_ap50"][r] == pytest.approx(ref50, abs=1e-12)
        assert rows["box_ap50_95"][r] == pytest.approx(ref, abs=1e-12)


def test_froc_by_hand() -> None:
    # 4 images, 3 GT boxes (images a, b); detections with scores; FP rate = FP / 4 images.
    gt = {"a": [[0, 0, 10, 10]], "b": [[0, 0, 10, 10], [50, 50, 10, 10]]}
    det = {"a": ([[0, 0, 10, 10], [0, 0, 10, 10]], [0.9, 0.4]),  # hit, then a duplicate = FP
           "b": ([[50, 50, 10, 10], [90, 90, 5, 5]], [0.3, 0.8]),  # hit at 0.3, FP at 0.8
           "c": ([[1, 1, 3, 3]], [0.6])}  # FP on a negative
    m = match_boxes(["a", "b", "c", "d"], np.array([1, 1, 0, 0]), gt, det)
    # by score: 0.9 hit (1/3, 0 FP), 0.8 FP (1), 0.6 FP (2), 0.4 FP (3), 0.3 hit (2/3, 3 FP)
    # FP rate after each: 0, .25, .5, .75, .75
    p = box_point_estimates(m)
    expect = {0.125: 1 / 3, 0.25: 1 / 3, 0.5: 1 / 3, 1.0: 2 / 3, 2.0: 2 / 3, 4.0: 2 / 3, 8.0: 2 / 3}
    for rate, sens in expect.items():
        assert p[froc_key(rate)] == pytest.approx(sens)
    assert p["froc_mean"] == pytest.approx(np.mean(list(expect.values())))


def test_component_boxes_and_scores() -> None:
    prob = np.zeros((20, 30), np.float32)
    prob[2:5, 3:9] = 0.6
    prob[3, 4] = 0.9
    prob[10:12, 20:21] = 0.7
    prob[15, 15] = 0.2  # below threshold
    boxes, scores = component_boxes(prob, 0.5, "max")
    order = np.argsort(boxes[:, 0])
    assert boxes[order].tolist() == [[3, 2, 6, 3], [20, 10, 1, 2]]
    assert scores[order] == pytest.approx([0.9, 0.7])
    _, means = component_boxes(prob, 0.5, "mean")
    assert means[order] == pytest.approx([(17 * 0.6 + 0.9) / 18, 0.7])
    assert component_boxes(np.zeros((4, 4)), 0.5)[0].shape == (0, 4)


def test_bootstrap_and_paired_delta() -> None:
    rng = np.random.default_rng(1)
    ids = [str(k) for k in range(30)]
    labels = np.arange(30) < 12
    gt = {i: [[10, 10, 20, 20]] for i, p in zip(ids, labels, strict=True) if p}
    det = {i: ([[10 + rng.normal(0, 3), 10, 20, 20]], [rng.random()]) for i in ids}
    m = match_boxes(ids, labels, gt, det)
    body = box_metrics(m, n_resamples=200, seed=0, box_score="max")
    for key in ("box_ap50", "box_ap50_95", "froc_mean"):
        lo, hi = body[f"{key}_ci95"]
        assert lo <= body[key] <= hi
    assert body["n_gt_boxes"] == 12 and body["n_pred_boxes"] == 30 and body["n_images"] == 30
    same = paired_box_delta(m, m, n_resamples=50)
    assert all(v["delta"] == 0 and v["delta_ci95"] == [0, 0] for v in same.values())


# --------------------------------------------------------------------------------------
# frames and readers


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_to_exif_matches_pil_transpose(orientation: int) -> None:
    from PIL import Image

    from fxbench.data.decode import decode_image

    ws, hs = 40, 24
    stored = np.zeros((hs, ws), np.uint8)
    stored[3:9, 5:17] = 255  # box x 5-17, y 3-9 in the stored grid
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="PNG", exif=exif.tobytes())
    shown = decode_image(buf.getvalue(), "t.png").pixels > 127
    rows, cols = np.nonzero(shown)
    expect = [cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()]
    got = stored_to_exif(np.array([[5, 3, 12, 6]]), orientation, (ws, hs))
    assert got.round(6).tolist() == [list(map(float, expect))]


def test_coco_results_reader_accepts_names_and_numbers(tmp_path: Path) -> None:
    rows = [{"image_id": "IMG0000019.jpg", "width": "100", "height": "50", "exif_orientation": "1", "label": "1"},
            {"image_id": "IMG0000020.jpg", "width": "100", "height": "50", "exif_orientation": "6", "label": "0"}]
    path = tmp_path / "res.json"
    path.write_text(json.dumps([
        {"image_id": "IMG0000019", "bbox": [1, 2, 3, 4], "score": 0.5},
        {"image_id": 19, "category_id": 0, "bbox": [5, 6, 7, 8], "score": 0.25},
        {"file_name": "IMG0000020.jpg", "image_id": 7, "bbox": [0, 0, 10, 5], "score": 0.75},
        {"image_id": "IMG0009999.jpg", "bbox": [0, 0, 1, 1], "score": 0.1},
    ]))
    det, notes = read_coco_results(path, rows, "exif")
    assert det["IMG0000019.jpg"][0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert det["IMG0000020.jpg"][1].tolist() == [0.75]
    assert notes == ["1 COCO records name images outside this split; ignored"]
    stored, _ = read_coco_results(path, rows, "stored")  # orientation 6: stored grid is 50 x 100
    assert stored["IMG0000020.jpg"][0].tolist() == [[95.0, 0.0, 5.0, 10.0]]
    path.write_text(json.dumps([{"image_id": "IMG0000019", "bbox": [1, 2, -3, 4], "score": 0.5}]))
    with pytest.raises(DataError, match="w, h >= 0"):
        read_coco_results(path, rows, "exif")


# --------------------------------------------------------------------------------------
# peers through the CLI


def test_perfect_and_shifted_yolo_peers(prep: Path, tmp_path: Path) -> None:
    write_yolo(tmp_path / "perfect", prep, "train")
    res = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "perfect"), "--prepared", str(prep),
                              "--split", "train", "--bootstrap", "20", "--json"])
    assert res.exit_code == 0, res.output
    body = json.loads((tmp_path / "perfect.fxbench-peer" / "metrics" / "train.json").read_text())
    boxes = body["boxes"]
    assert boxes["box_ap50"] == 1.0 and boxes["box_ap50_95"] == 1.0
    assert [boxes[k] for k in FROC_KEYS] == [1.0] * len(FROC_KEYS)
    assert body["roc_auc_presence"] == 1.0 and body["presence_source"] == "max_box_confidence"
    assert "box_ap50" in res.output
    # shifted by 3/7 of the width: IoU = (w - s) / (w + s) = 0.4 with its own GT box
    write_yolo(tmp_path / "shifted", prep, "train", shift=3 / 7)
    written = sum(len(f.read_text().splitlines()) for f in (tmp_path / "shifted").glob("*.txt"))
    assert written >= boxes["n_gt_boxes"] - 2  # almost every box is kept
    res = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "shifted"), "--prepared", str(prep),
                              "--split", "train", "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    boxes = json.loads((tmp_path / "shifted.fxbench-peer" / "metrics" / "train.json").read_text())["boxes"]
    assert boxes["box_ap50"] == 0.0 and [boxes[k] for k in FROC_KEYS] == [0.0] * len(FROC_KEYS)


def test_yolo_peer_on_test_without_out_folder_is_logged(prep: Path, tmp_path: Path) -> None:
    from fxbench.select.seal import read_test_access

    write_yolo(tmp_path / "labels", prep, "test", conf=0.8)
    for n in (1, 2):
        res = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "labels"), "--prepared", str(prep),
                                  "--split", "test", "--bootstrap", "0"])
        assert res.exit_code == 0, res.output
        log = read_test_access(tmp_path / "labels.fxbench-peer")
        assert len(log) == n and log[-1]["kind"] == "peer"
    metrics = json.loads((tmp_path / "labels.fxbench-peer" / "metrics" / "test.json").read_text())
    assert metrics["kind"] == "peer" and metrics["test_accesses"] == 2 and metrics["boxes"]["box_ap50"] == 1.0


def test_yolo_txt_errors_are_one_line(prep: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    row = manifest(prep, "val")[0]
    (bad / f"{Path(row['image_id']).stem}.txt").write_text("0 0.5 0.5 0.1 0.1 0.2 0.3 0.4 0.9\n")
    res = runner.invoke(app, ["eval", "--predictions", str(bad), "--prepared", str(prep), "--split", "val"])
    assert res.exit_code != 0 and "class cx cy w h conf" in res.output
    (tmp_path / "predict" / "labels").mkdir(parents=True)
    shutil.copy(next(bad.glob("*.txt")), tmp_path / "predict" / "labels")
    res = runner.invoke(app, ["eval", "--predictions", str(tmp_path / "predict"), "--prepared", str(prep), "--split", "val"])
    assert res.exit_code != 0 and "labels" in res.output and "--predictions" in res.output


# --------------------------------------------------------------------------------------
# export yolo


def _ultralytics_python() -> str | None:
    """An interpreter with ultralytics (FXBENCH_ULTRALYTICS_PYTHON, or this one), else None."""
    candidate = os.environ.get("FXBENCH_ULTRALYTICS_PYTHON")
    if candidate:
        return shutil.which(candidate) or candidate
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        return None
    return sys.executable


def test_export_yolo_layout_and_loader(prep: Path, tmp_path: Path) -> None:
    out = tmp_path / "yolo"
    res = runner.invoke(app, ["export", "yolo", str(prep), str(out)])
    assert res.exit_code == 0, res.output
    gt = read_gt_boxes(prep)
    assert gt is not None
    import yaml
    from PIL import Image

    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["nc"] == 1 and data["names"] == {0: "fracture"} and Path(data["path"]) == out.resolve()
    assert {data[s] for s in ("train", "val", "test")} == {"images/train", "images/val", "images/test"}
    with open(out / "case_mapping.csv", newline="") as fh:
        image_of = {r["image_id"]: r["image"] for r in csv.DictReader(fh)}
    kinds = set()
    for row in manifest(prep):
        split, stem = row["split"], Path(row["image_id"]).stem
        image = out / image_of[row["image_id"]]
        assert image.parent == out / "images" / split and image.stem == stem
        copied = row["exif_orientation"] == "1" and row["truncated"] == "0"
        assert image.suffix == (".jpg" if copied else ".png")  # rotated or truncated: decoded, transposed
        kinds.add(image.suffix)
        with Image.open(image) as im:
            assert im.size == (int(row["width"]), int(row["height"]))
            assert im.getexif().get(0x0112, 1) == 1
        label = out / "labels" / split / f"{stem}.txt"
        if split == "test":
            assert not label.exists()  # sealed unless --test-labels
            continue
        lines = [ln.split() for ln in label.read_text().splitlines()]
        assert len(lines) == len(gt[row["image_id"]])
        for parts, (x, y, w, h) in zip(lines, gt[row["image_id"]], strict=True):
            assert parts[0] == "0" and all(0.0 <= float(v) <= 1.0 for v in parts[1:])
            W, H = float(row["width"]), float(row["height"])
            assert [float(v) for v in parts[1:]] == pytest.approx([(x + w / 2) / W, (y + h / 2) / H, w / W, h / H], abs=2e-6)
    assert kinds == {".jpg", ".png"}  # the synthetic archive has rotated and truncated JPEGs
    again = runner.invoke(app, ["export", "yolo", str(prep), str(out)])
    assert again.exit_code != 0 and "--force" in again.output
    res = runner.invoke(app, ["export", "yolo", str(prep), str(out), "--force", "--test-labels"])
    assert res.exit_code == 0 and any((out / "labels" / "test").iterdir())
    python = _ultralytics_python()
    if python is None:
        pytest.skip("ultralytics not installed (set FXBENCH_ULTRALYTICS_PYTHON to a venv's python to run its loader)")
    script = Path(__file__).resolve().parents[1] / "scripts" / "verify_yolo_export.py"
    env = {**os.environ, "YOLO_OFFLINE": "1", "YOLO_CONFIG_DIR": str(tmp_path / "ultralytics-config")}
    proc = subprocess.run([python, str(script), str(out / "data.yaml"), "--test-labels"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"] is True


def test_native_window_boxes_equal_full_upsampling() -> None:
    from fxbench.artifacts.predictions import Predictions
    from fxbench.evaluate.native import to_native, to_native_window

    rng = np.random.default_rng(3)
    s, n = 16, 6
    probs = np.zeros((n, s, s), np.float16)
    for k in range(n - 1):  # the last map stays empty
        for _ in range(3):
            r, c = rng.integers(2, 13, 2)
            probs[k, r:r + 2, c:c + 3] = rng.uniform(0.3, 1.0)
    boxes = np.array([[2, 0, 12, 16]] * n)  # letterbox: rows 2-13 hold the image
    hw = np.array([[45, 61]] * n)
    pred = Predictions(image_ids=[f"i{k}" for k in range(n)], probs=probs, masks=(probs > 0.5).astype(np.uint8),
                       boxes=boxes, native_hw=hw, presence={"max": probs.reshape(n, -1).max(1).astype(np.float32)},
                       labels=(probs > 0.5).reshape(n, -1).any(1), meta={"split": "val"})
    for k in range(n):
        full = to_native(probs[k], boxes[k], hw[k])
        window = to_native_window(probs[k], boxes[k], hw[k], 0.5)
        if window is None:
            assert not (full >= 0.5).any()
            continue
        part, top, left = window
        assert np.array_equal(part, full[top:top + part.shape[0], left:left + part.shape[1]])
        outside = full.copy()
        outside[top:top + part.shape[0], left:left + part.shape[1]] = 0
        assert not (outside >= 0.5).any()
    from fxbench.evaluate.boxes import prediction_box_matches

    m = prediction_box_matches(pred, {"threshold": 0.5, "min_component": 0}, {}, "max")
    want = [component_boxes(to_native(probs[k], boxes[k], hw[k]), 0.5, "max") for k in range(n)]
    assert m.n_det.tolist() == [len(b) for b, _ in want]
    got = sorted(m.det_score.tolist())
    assert got == pytest.approx(sorted(float(v) for _, sc in want for v in sc))


def test_tune_chooses_the_box_score_on_val(tmp_path: Path) -> None:
    from fxbench.artifacts.decision import Decision
    from fxbench.artifacts.predictions import Predictions
    from fxbench.select.tune import choose_box_score

    probs = np.zeros((2, 16, 16), np.float16)
    probs[0, 2:6, 2:6] = 0.6  # the fracture: max 0.6, mean 0.6
    probs[1, 8:12, 8:12] = 0.51  # a false positive on the negative: max 0.99, mean ~0.54
    probs[1, 9, 9] = 0.99
    masks = np.zeros((2, 16, 16), np.uint8)
    masks[0, 2:6, 2:6] = 1
    (tmp_path / "boxes.json").write_text(json.dumps({"boxes": {"a.jpg": [[2, 2, 4, 4]], "b.jpg": []}}))
    pred = Predictions(image_ids=["a.jpg", "b.jpg"], probs=probs, masks=masks, boxes=np.array([[0, 0, 16, 16]] * 2),
                       native_hw=np.array([[16, 16]] * 2), presence={"max": np.array([0.6, 0.99], np.float32)},
                       labels=np.array([True, False]), meta={"split": "val", "prepared": str(tmp_path)})
    got = choose_box_score(pred, Decision(threshold=0.5, source="tune", selected_on="val"))
    assert got == {"box_score": "mean", "box_score_val_ap50": {"max": pytest.approx(0.5), "mean": pytest.approx(1.0)}}
    (tmp_path / "boxes.json").unlink()
    assert choose_box_score(pred, Decision(threshold=0.5)) is None
