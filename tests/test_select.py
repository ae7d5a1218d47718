"""tune, the test seal, ensemble and blend on small hand-built predictions artifacts."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fxbench.artifacts.decision import Decision, read_decision, write_decision
from fxbench.artifacts.predictions import Predictions, load_predictions, save_predictions
from fxbench.cli.app import app
from fxbench.errors import DataError, ProtocolError, UsageError
from fxbench.evaluate.metrics import segmentation_metrics
from fxbench.io import sha256_file
from fxbench.select.blend import fuse_presence, run_blend, select_rule
from fxbench.select.ensemble import run_ensemble
from fxbench.select.seal import authorize_test, log_test_access, read_test_access, test_access_count
from fxbench.select.tune import (
    seg_grid,
    threshold_counts,
    threshold_grid,
    tune_predictions,
    tune_run,
)

S = 32
runner = CliRunner()


def make_pred(split: str, seed: int, n: int = 24) -> Predictions:
    """Every other image has a planted 6x6 lesion (fixed per split, like a shared cache);
    the "model" (``seed``) gives noisy probabilities around the truth."""
    gt_rng = np.random.default_rng(len(split) * 1000 + n)
    rng = np.random.default_rng(seed)
    ids = [f"{split}_{i:03d}" for i in range(n)]
    masks = np.zeros((n, S, S), np.uint8)
    probs = rng.uniform(0.0, 0.35, (n, S, S)).astype(np.float32)
    for i in range(0, n, 2):
        r, c = gt_rng.integers(4, S - 10, 2)
        masks[i, r:r + 6, c:c + 6] = 1
        probs[i, r:r + 6, c:c + 6] = rng.uniform(0.3, 0.95, (6, 6))
    labels = masks.reshape(n, -1).any(axis=1)
    head = np.clip(labels * 0.6 + rng.uniform(0.0, 0.4, n), 0, 1).astype(np.float32)
    p16 = probs.astype(np.float16)
    return Predictions(
        image_ids=ids, probs=p16, masks=masks, boxes=np.tile([0, 0, S, S], (n, 1)), native_hw=np.full((n, 2), S),
        presence={"head": head, "max": p16.reshape(n, -1).max(axis=1).astype(np.float32)},
        labels=labels, meta={"split": split, "tta": "none", "cache_sha256": "c" * 64, "split_sha256": "s" * 64},
    )


def make_run(root: Path, name: str, seed: int) -> Path:
    run = root / name
    save_predictions(run / "predictions" / "val.npz", make_pred("val", seed))
    save_predictions(run / "predictions" / "test.npz", make_pred("test", seed + 100))
    return run


# --------------------------------------------------------------------------------------
# tune


def test_threshold_counts_match_direct_thresholding() -> None:
    p = make_pred("val", 1)
    thr = threshold_grid()
    pred, inter, gt = threshold_counts(p.probs, p.masks, thr)
    for k in (0, 7, 18):
        on = p.probs >= thr[k]
        assert np.array_equal(pred[:, k], on.reshape(len(on), -1).sum(axis=1))
        assert np.array_equal(inter[:, k], (on & (p.masks > 0)).reshape(len(on), -1).sum(axis=1))
    assert np.array_equal(gt, p.masks.reshape(len(gt), -1).sum(axis=1))


def test_grid_equals_evaluate_at_every_threshold() -> None:
    p = make_pred("val", 2)
    rows = seg_grid(p.probs, p.masks, threshold_grid(), min_components=(0, 3))
    for row in rows:
        ref = segmentation_metrics(p.probs, p.masks, row["threshold"], min_component=row["min_component"], lesions=False)
        for key in ("dice_pos", "iou_pos", "dice", "recall_pos"):
            assert row[key] == pytest.approx(ref[key], abs=1e-12)


def test_tune_picks_the_known_best_threshold() -> None:
    # lesion pixels 0.62, a false-positive halo at 0.42, background 0.1: only 0.42 < t <= 0.62
    # isolates the lesion (dice_pos 1); the first such grid point is 0.45.
    n = 6
    masks = np.zeros((n, S, S), np.uint8)
    probs = np.full((n, S, S), 0.1, np.float32)
    for i in range(0, n, 2):
        probs[i, 9:19, 9:19] = 0.42
        probs[i, 10:18, 10:18] = 0.62
        masks[i, 10:18, 10:18] = 1
    pred = Predictions(
        image_ids=[f"v{i}" for i in range(n)], probs=probs, masks=masks, boxes=np.tile([0, 0, S, S], (n, 1)),
        native_hw=np.full((n, 2), S), presence={"max": probs.reshape(n, -1).max(axis=1)},
        labels=masks.reshape(n, -1).any(axis=1), meta={"split": "val"},
    )
    result = tune_predictions(pred, val_sha256="x")
    assert result.decision.threshold == pytest.approx(0.45)
    assert result.best["dice_pos"] == pytest.approx(1.0)
    # the presence threshold separates the classes exactly (max 0.62 vs 0.1)
    assert result.decision.presence_source == "max"
    assert result.decision.presence_threshold == pytest.approx(0.62, abs=1e-3)


def test_tune_choice_is_the_argmax_of_evaluate() -> None:
    p = make_pred("val", 3)
    grid = threshold_grid()
    scores = [segmentation_metrics(p.probs, p.masks, t, lesions=False)["dice_pos"] for t in grid]
    best = grid[int(np.argmax(scores))]
    assert tune_predictions(p, val_sha256=None).decision.threshold == pytest.approx(best)
    iou = [segmentation_metrics(p.probs, p.masks, t, lesions=False)["iou_pos"] for t in grid]
    assert tune_predictions(p, val_sha256=None, metric="iou_pos").decision.threshold == pytest.approx(grid[int(np.argmax(iou))])


def test_tune_presence_source_by_auc_and_youden_rule() -> None:
    p = make_pred("val", 4)
    p.presence["noise"] = np.random.default_rng(0).uniform(size=p.n).astype(np.float32)
    r = tune_predictions(p, val_sha256=None, presence_rule="youden", metric="auc_plus_dice_pos")
    aucs = {row["presence_source"]: row["roc_auc_presence"] for row in r.presence}
    assert r.decision.presence_source == max(aucs, key=aucs.get)
    assert r.decision.presence_rule == "youden"
    assert r.best["selection_score"] == pytest.approx(r.best["dice_pos"] + aucs[r.decision.presence_source])


def test_tune_run_writes_decision_with_val_sha(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", 5)
    result = tune_run(run)
    d = json.loads((run / "decision.json").read_text())
    assert d["val_predictions_sha256"] == sha256_file(run / "predictions" / "val.npz")
    assert d["source"] == "tune" and d["selected_on"] == "val" and d["selection_metric"] == "dice_pos"
    assert d["threshold"] == result.decision.threshold
    assert (run / "tune" / "grid.csv").read_text().count("\n") == 1 + len(threshold_grid())
    assert read_decision(run).sha256() == result.decision.sha256()


def test_tune_refuses_test(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", 6)
    with pytest.raises(ProtocolError):
        tune_run(run, "test")
    res = runner.invoke(app, ["tune", str(run), "--split", "test"])
    assert res.exit_code == 4
    assert not (run / "decision.json").exists()
    with pytest.raises(ProtocolError):
        tune_predictions(make_pred("test", 1), val_sha256=None)


def test_tune_cli_writes_decision(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", 7)
    res = runner.invoke(app, ["tune", str(run), "--min-component", "0", "--min-component", "4", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads((run / "decision.json").read_text())
    assert d["min_component"] in (0, 4) and 0.05 <= d["threshold"] <= 0.95
    res = runner.invoke(app, ["tune", str(run), "--metric", "dice_poss"])
    assert res.exit_code == 2


def _grid_thresholds(run: Path) -> list[float]:
    import csv

    with open(run / "tune" / "grid.csv", newline="", encoding="utf-8") as fh:
        return sorted({round(float(r["threshold"]), 4) for r in csv.DictReader(fh)})


def test_tune_grid_comes_from_the_select_section(tmp_path: Path) -> None:
    """The grid is schema knobs: select.* via --config or --set, the flags as shortcuts."""
    run = make_run(tmp_path, "r1", 7)
    assert runner.invoke(app, ["tune", str(run)]).exit_code == 0
    assert _grid_thresholds(run) == [round(0.05 * k, 4) for k in range(1, 20)]  # schema default 0.05..0.95
    res = runner.invoke(app, ["tune", str(run), "--set", "select.threshold_step=0.2", "--set", "select.threshold_start=0.1"])
    assert res.exit_code == 0, res.output
    assert _grid_thresholds(run) == [0.1, 0.3, 0.5, 0.7, 0.9]
    cfg = tmp_path / "select.yaml"
    cfg.write_text("select:\n  threshold_start: 0.2\n  threshold_stop: 0.6\n  threshold_step: 0.2\n  min_components: [0, 4]\n")
    assert runner.invoke(app, ["tune", str(run), "--config", str(cfg), "--stop", "0.4"]).exit_code == 0
    assert _grid_thresholds(run) == [0.2, 0.4]  # the flag overrides the file
    d = json.loads((run / "decision.json").read_text())
    assert d["min_component"] in (0, 4)
    res = runner.invoke(app, ["tune", str(run), "--set", "select.threshold_stepp=0.1"])
    assert res.exit_code == 2 and "select.threshold_step" in res.output  # did-you-mean


# --------------------------------------------------------------------------------------
# seal


def test_seal_refuses_without_decision_and_logs_accesses(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", 8)
    with pytest.raises(ProtocolError) as err:
        authorize_test(run, None, None)
    assert err.value.exit_code == 4 and "fxbench tune" in str(err.value) and "--threshold" in str(err.value)
    with pytest.raises(UsageError):
        authorize_test(run, run / "decision.json", 0.5)

    fixed = authorize_test(run, None, 0.3)
    assert fixed.source == "user-fixed" and fixed.threshold == 0.3 and fixed.selected_on == "user"

    tune_run(run)
    with pytest.raises(ProtocolError, match="--decision"):  # never picked up implicitly
        authorize_test(run, None, None)
    tuned = authorize_test(run, run / "decision.json", None)
    assert tuned.source == "tune"
    assert test_access_count(run) == 0
    for k in range(1, 4):
        log_test_access(run, tuned.sha256(), ["fxbench", "eval", str(run), "--split", "test"])
        assert test_access_count(run) == k
    lines = (run / "test_access.log").read_text().splitlines()
    assert len(lines) == 3
    rec = json.loads(lines[-1])
    assert rec["decision_sha256"] == tuned.sha256()
    assert rec["command"].startswith("fxbench eval") and rec["metrics"].endswith("metrics/test.json")
    assert {"time", "decision_sha256", "command", "metrics"} <= set(read_test_access(run)[0])


def test_seal_rejects_stale_or_non_val_decisions(tmp_path: Path) -> None:
    run = make_run(tmp_path, "r1", 9)
    tune_run(run)
    save_predictions(run / "predictions" / "val.npz", make_pred("val", 99))  # val changed after tuning
    with pytest.raises(ProtocolError, match="re-run `fxbench tune"):
        authorize_test(run, run / "decision.json", None)
    bad = Decision(threshold=0.5, selected_on="user", source="tune")
    write_decision(tmp_path / "bad.json", bad)
    with pytest.raises(ProtocolError):
        authorize_test(run, tmp_path / "bad.json", None)
    with pytest.raises(DataError):
        authorize_test(run, tmp_path / "missing.json", None)


# --------------------------------------------------------------------------------------
# ensemble


def test_ensemble_is_the_mean_and_tests_once(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "a", 10), make_run(tmp_path, "b", 11)
    out = tmp_path / "ens"
    summary = run_ensemble([a, b], out, bootstrap=0, command="fxbench ensemble a b --out ens")
    pa, pb = load_predictions(a / "predictions" / "val.npz"), load_predictions(b / "predictions" / "val.npz")
    pe = load_predictions(out / "predictions" / "val.npz")
    mean = ((pa.probs.astype(np.float32) + pb.probs.astype(np.float32)) / 2).astype(np.float16)
    assert np.array_equal(pe.probs, mean)
    assert np.allclose(pe.presence["head"], (pa.presence["head"] + pb.presence["head"]) / 2, atol=1e-7)
    assert np.array_equal(pe.presence["mean_map_max"], mean.reshape(len(mean), -1).max(axis=1).astype(np.float32))
    d = json.loads((out / "decision.json").read_text())
    assert d["val_predictions_sha256"] == sha256_file(out / "predictions" / "val.npz")
    assert d["kind"] == "ensemble" and d["members"] == ["a", "b"]
    members = json.loads((out / "members.json").read_text())
    assert [m["name"] for m in members["members"]] == ["a", "b"]
    test = json.loads((out / "metrics" / "test.json").read_text())
    assert test["test_accesses"] == 1 and test["threshold"] == d["threshold"]
    assert summary["test"]["dice_pos"] == pytest.approx(test["dice_pos"])
    assert test_access_count(out) == 1
    with pytest.raises(ProtocolError):  # the ensemble's test split is used once
        run_ensemble([a, b], out, bootstrap=0)
    assert test_access_count(out) == 1


def test_ensemble_rejects_different_images(tmp_path: Path) -> None:
    a = make_run(tmp_path, "a", 12)
    b = tmp_path / "b"
    save_predictions(b / "predictions" / "val.npz", make_pred("val", 13, n=20))
    with pytest.raises(DataError, match="different images"):
        run_ensemble([a, b], tmp_path / "ens", bootstrap=0, test=False)


def test_ensemble_cli(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "a", 14), make_run(tmp_path, "b", 15)
    res = runner.invoke(app, ["ensemble", str(a), str(b), "--out", str(tmp_path / "ens"), "--bootstrap", "0"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "ens" / "metrics" / "test.json").is_file()
    assert test_access_count(tmp_path / "ens") == 1


# --------------------------------------------------------------------------------------
# blend


def test_fuse_presence_has_no_double_sigmoid() -> None:
    s_a = np.array([0.8, 0.1, 0.55], np.float32)
    s_b = np.array([0.2, 0.3, 0.45], np.float32)
    assert np.array_equal(fuse_presence(s_a, s_b, None, beta=1.0), s_a)
    assert np.allclose(fuse_presence(s_a, s_b, None, beta=0.5), [0.5, 0.2, 0.5])
    s_c = np.array([0.9, 0.0, 0.25], np.float32)
    assert np.array_equal(fuse_presence(s_a, s_b, s_c, beta=1.0, gamma=0.0), s_c)
    assert float(fuse_presence(s_a, s_b, None, 1.0)[0]) != pytest.approx(1 / (1 + math.exp(-0.8)))
    with pytest.raises(UsageError):
        fuse_presence(s_a, s_b, None, beta=0.5, gamma=0.5)


def test_blend_alpha1_beta1_equals_model_a(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "a", 16), make_run(tmp_path, "b", 17)
    pa = load_predictions(a / "predictions" / "val.npz")
    pa.presence["head"][0] = 0.8  # a known probability must pass through unchanged
    save_predictions(a / "predictions" / "val.npz", pa)
    out = tmp_path / "blend"
    summary = run_blend(a, b, out, alphas=[1.0], betas=[1.0], bootstrap=0, test=False)
    pv = load_predictions(out / "predictions" / "val.npz")
    assert np.array_equal(pv.probs, pa.probs)
    assert np.array_equal(pv.presence["blend"], pa.presence["head"])
    assert float(pv.presence["blend"][0]) == pytest.approx(0.8)
    d = summary["decision"]
    assert d["alpha"] == 1.0 and d["beta"] == 1.0 and d["presence_source"] == "blend" and d["gamma"] is None
    assert d["presence_sources"] == {"a": "head", "b": "max", "classifier": None}
    val = json.loads((out / "metrics" / "val.json").read_text())
    ref = segmentation_metrics(pa.probs, pa.masks, d["threshold"], lesions=False)
    assert val["dice_pos"] == pytest.approx(ref["dice_pos"])
    assert test_access_count(out) == 0


def test_blend_grid_rules_and_classifier_fusion(tmp_path: Path) -> None:
    a, b, c = make_run(tmp_path, "a", 18), make_run(tmp_path, "b", 19), make_run(tmp_path, "c", 20)
    out = tmp_path / "fusion"
    summary = run_blend(a, b, out, classifier=c, alphas=[0.0, 0.5, 1.0], betas=[0.0, 1.0], gammas=[0.0, 0.5, 1.0],
                        thresholds=[0.3, 0.5, 0.7], bootstrap=0, command="fxbench blend a b --classifier c")
    rows = (out / "grid.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 3 * 2 * 3 == 1 + summary["num_rows"]
    header = rows[0].split(",")
    data = np.array([[float(x) for x in r.split(",")] for r in rows[1:]])
    col = {h: data[:, i] for i, h in enumerate(header)}
    joint = col["roc_auc_presence"] + col["dice_pos"]
    chosen = summary["best"]["best_joint"]
    assert chosen["auc_plus_dice_pos"] == pytest.approx(joint.max())
    assert summary["best"]["best_dice_pos"]["dice_pos"] == pytest.approx(col["dice_pos"].max())
    assert summary["best"]["best_auc"]["roc_auc_presence"] == pytest.approx(col["roc_auc_presence"].max())
    d = json.loads((out / "decision.json").read_text())
    assert (d["alpha"], d["threshold"], d["beta"], d["gamma"]) == (
        chosen["alpha"], chosen["threshold"], chosen["beta"], chosen["gamma"])
    # gamma = 0 uses the classifier's own scores
    va, vb, vc = (load_predictions(r / "predictions" / "val.npz") for r in (a, b, c))
    assert np.array_equal(fuse_presence(va.presence["head"], vb.presence["max"], vc.presence["head"], 0.3, 0.0),
                          vc.presence["head"])
    assert test_access_count(out) == 1 and json.loads((out / "metrics" / "test.json").read_text())["test_accesses"] == 1


def test_select_rule_orders_and_ties() -> None:
    grid = {
        "roc_auc_presence": np.array([0.9, 0.9, 0.8, np.nan]),
        "average_precision_presence": np.array([0.5, 0.6, 0.9, 1.0]),
        "dice_pos": np.array([0.2, 0.1, 0.4, 0.9]),
    }
    grid["auc_plus_dice_pos"] = grid["roc_auc_presence"] + grid["dice_pos"]
    assert select_rule(grid, "best_auc") == 1  # AUC tie broken by AP
    assert select_rule(grid, "best_dice_pos") == 3  # dice decides first
    assert select_rule(grid, "best_joint") == 2  # 1.2 beats 1.1 and 1.0; NaN + 0.9 never wins
    with pytest.raises(UsageError):
        select_rule(grid, "best")


def test_blend_cli(tmp_path: Path) -> None:
    a, b = make_run(tmp_path, "a", 21), make_run(tmp_path, "b", 22)
    out = tmp_path / "bl"
    res = runner.invoke(app, ["blend", str(a), str(b), "--out", str(out), "--alpha-step", "0.5", "--beta-step", "0.5",
                              "--bootstrap", "0", "--rule", "best_dice_pos"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "decision.json").read_text())["rule"] == "best_dice_pos"
    assert runner.invoke(app, ["blend", str(a), str(b), "--out", str(out), "--bootstrap", "0"]).exit_code == 4
