"""Peer masks scored with fxbench's evaluate code, and the nnU-Net v2 export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fxbench.artifacts.predictions import Predictions
from fxbench.cli.app import app
from fxbench.data.cache import load_cache
from fxbench.errors import DataError, ProtocolError, UsageError
from fxbench.evaluate import evaluate_predictions, roc_auc
from fxbench.select.peers import export_nnunet, masks_to_predictions, score_mask_folder
from fxbench.select.seal import test_access_count

S = 32
runner = CliRunner()


@pytest.fixture(scope="module")
def prep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real prepared folder from fxbench's synthetic archive (small images, one 32 px cache)."""
    from fxbench.data.prepare import prepare
    from fxbench.data.synthetic import make_synthetic_archive

    root = tmp_path_factory.mktemp("peers")
    archive = make_synthetic_archive(root / "archive", n_images=24, seed=3, positive_fraction=0.5, scale=0.1)
    prepare(archive, root / "prep", split_mode="grouped", seed=42, cache_sizes=(S,), cache_format="raw")
    return root / "prep"


def manifest(prep: Path) -> list[dict[str, str]]:
    with open(prep / "manifest.csv", newline="") as fh:
        return sorted(csv.DictReader(fh), key=lambda r: r["image_id"])


def split_cache(prep: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    ids = [r["image_id"] for r in manifest(prep) if r["split"] == split]
    cache = load_cache(prep / "cache" / f"{S}.npz")
    idx = np.array([cache.image_ids.index(i) for i in ids])
    return ids, cache.masks[idx], cache.boxes[idx], cache.native_hw[idx]


def write_png(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((mask > 0).astype(np.uint8) * 255).save(path)


def test_peer_scoring_equals_direct_evaluation(prep: Path, tmp_path: Path) -> None:
    split = "train"  # the largest split of the tiny archive
    ids, gt, boxes, hw = split_cache(prep, split)
    assert gt.any(), "fixture needs positives"
    # a peer that misses one column of every lesion and adds a false blob on one negative image
    pred = gt.copy()
    for i in range(len(ids)):
        cols = np.flatnonzero(pred[i].any(axis=0))
        if len(cols) > 1:
            pred[i][:, cols[0]] = 0
    neg = int(np.flatnonzero(~gt.reshape(len(ids), -1).any(axis=1))[0])
    pred[neg, 10:13, 10:13] = 1
    for image_id, m in zip(ids, pred, strict=True):
        write_png(tmp_path / "peer" / f"{Path(image_id).stem}.png", m)

    got = score_mask_folder(tmp_path / "peer", prep, split, bootstrap=50, seed=1)
    direct = Predictions(
        image_ids=ids, probs=pred.astype(np.float16), masks=gt, boxes=boxes, native_hw=hw,
        presence={"area": np.zeros(len(ids), np.float32)}, labels=gt.reshape(len(ids), -1).any(axis=1),
        meta={"split": split},
    )
    ref = evaluate_predictions(direct, {"threshold": 0.5, "presence_source": "area"}, bootstrap=50, seed=1)
    for key in ("dice_pos", "iou_pos", "dice", "precision_pos", "recall_pos", "empty_specificity", "lesion_recall",
                "num_positive", "dice_pos_ci95"):
        assert got[key] == pytest.approx(ref[key]), key
    assert got["decision_source"] == "user-fixed" and got["presence_source"] == "area"


def test_native_size_masks_match_the_cache_ground_truth(prep: Path, tmp_path: Path) -> None:
    ids, gt, _, _ = split_cache(prep, "train")
    for image_id in ids:  # the ground truth itself, at native size, from another "tool"
        stem = Path(image_id).stem
        with Image.open(prep / "masks" / f"{stem}.png") as im:
            write_png(tmp_path / "native" / f"{stem}.png", np.asarray(im) > 0)
    pred = masks_to_predictions(tmp_path / "native", prep, "train")
    assert np.array_equal(pred.probs.astype(np.uint8), gt)  # same letterbox rule as prepare
    m = score_mask_folder(tmp_path / "native", prep, "train", bootstrap=0)
    assert m["dice_pos"] == pytest.approx(1.0) and m["empty_specificity"] == pytest.approx(1.0)
    native = score_mask_folder(tmp_path / "native", prep, "train", bootstrap=0, resolution="native")
    assert native["resolution"] == "native" and native["dice_pos"] > 0.5


def test_presence_csv_missing_masks_and_test_log(prep: Path, tmp_path: Path) -> None:
    ids, gt, _, _ = split_cache(prep, "test")
    labels = gt.reshape(len(ids), -1).any(axis=1)
    scores = np.linspace(0.1, 0.9, len(ids))
    with open(tmp_path / "presence.csv", "w") as fh:
        fh.write("image_id,score\n" + "".join(f"{i},{s}\n" for i, s in zip(ids, scores, strict=True)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="missing"):
        score_mask_folder(tmp_path / "empty", prep, "test", out_dir=tmp_path / "peer_run")
    with pytest.raises(ProtocolError, match="output folder"):  # test scoring is sealed: it needs a logged folder
        score_mask_folder(tmp_path / "empty", prep, "test", allow_missing=True)
    m = score_mask_folder(tmp_path / "empty", prep, "test", tmp_path / "presence.csv", allow_missing=True,
                          bootstrap=0, out_dir=tmp_path / "peer_run")
    assert m["presence_source"] == "csv"
    if labels.any() and not labels.all():
        assert m["roc_auc_presence"] == pytest.approx(roc_auc(scores, labels))
    assert len(m["missing_predictions"]) == len(ids)
    assert test_access_count(tmp_path / "peer_run") == 1
    assert (tmp_path / "peer_run" / "metrics" / "test.json").is_file()
    write_png(tmp_path / "bad" / f"{Path(ids[0]).stem}.png", np.zeros((7, 5), np.uint8))
    with pytest.raises(DataError, match="expected native"):
        masks_to_predictions(tmp_path / "bad", prep, "test", allow_missing=True)


def test_export_nnunet_layout_and_split(prep: Path, tmp_path: Path) -> None:
    rows = manifest(prep)
    root = export_nnunet(prep, tmp_path / "raw")
    assert root.name == "Dataset501_FracAtlas"
    stems = {s: sorted(Path(r["image_id"]).stem for r in rows if r["split"] == s) for s in ("train", "val", "test")}
    tr = sorted(p.name for p in (root / "imagesTr").iterdir())
    assert tr == sorted(f"{c}_0000.png" for c in stems["train"] + stems["val"])
    assert sorted(p.name for p in (root / "labelsTr").iterdir()) == sorted(f"{c}.png" for c in stems["train"] + stems["val"])
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == sorted(f"{c}_0000.png" for c in stems["test"])
    assert not (root / "labelsTs").exists()  # the test split stays sealed unless asked
    ds = json.loads((root / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "xray"} and ds["labels"] == {"background": 0, "fracture": 1}
    assert ds["file_ending"] == ".png" and ds["numTraining"] == len(tr)
    assert json.loads((root / "splits_final.json").read_text()) == [{"train": stems["train"], "val": stems["val"]}]
    for r in rows[:6]:
        stem = Path(r["image_id"]).stem
        sub = "imagesTs" if r["split"] == "test" else "imagesTr"
        with Image.open(root / sub / f"{stem}_0000.png") as im:
            assert im.mode == "L" and im.size == (int(r["width"]), int(r["height"]))
        if r["split"] != "test":
            with Image.open(root / "labelsTr" / f"{stem}.png") as lab, Image.open(prep / "masks" / f"{stem}.png") as gt:
                label = np.asarray(lab)
                assert set(np.unique(label)) <= {0, 1}
                assert np.array_equal(label, (np.asarray(gt) > 127).astype(np.uint8))
    with pytest.raises(UsageError):
        export_nnunet(prep, tmp_path / "raw")
    root = export_nnunet(prep, tmp_path / "raw", test_labels=True, overwrite=True)
    assert len(list((root / "labelsTs").iterdir())) == len(stems["test"])


def test_export_cli(prep: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["export", "nnunet", str(prep), str(tmp_path / "raw"), "--dataset-id", "777"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "raw" / "Dataset777_FracAtlas" / "splits_final.json").is_file()
    assert runner.invoke(app, ["export", "nnunet", str(prep), str(tmp_path / "raw"), "--dataset-id", "5"]).exit_code == 2
