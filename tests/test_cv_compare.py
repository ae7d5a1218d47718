"""Cross-validation fold runs, `fxbench cv` pooling and `fxbench compare` through the CLI."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fxbench.artifacts.predictions import Predictions, load_predictions, save_predictions
from fxbench.cli.app import app
from fxbench.config import load_config
from fxbench.evaluate import compute_per_image_stats
from fxbench.io import read_json, write_json_atomic
from fxbench.select.seal import check_true_split, test_access_count

K = 3


@pytest.fixture(scope="module")
def cv_runs(synth_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The synthetic archive prepared with 3 folds, and one tiny fold run per fold."""
    from fxbench.data.prepare import prepare
    from fxbench.launch.jobs import sweep_jobs
    from fxbench.launch.local import run_sequential

    root = tmp_path_factory.mktemp("cv")
    prep = root / "prep"
    prepare(synth_archive, prep, split_mode="grouped", seed=42, cache_sizes=(64,), workers=1, folds=K)
    cfg = load_config(None, [
        f"data.prepared={prep}", "data.image_size=64", "model.name=unet_dual", "model.base_channels=8",
        "train.epochs=1", "train.batch_size=8", "train.max_steps_per_epoch=2", "eval.bootstrap=0",
        "runtime.device=cpu", "runtime.channels_last=false", "train.selection_metric=neg_loss",
    ], environ={})
    sweep = sweep_jobs(cfg, root / "runs", "tiny", folds=list(range(K)))  # what `train --folds all` runs
    results = run_sequential(sweep)
    assert [r.status for r in results] == ["finished"] * K, [r.reason for r in results]
    return {"prep": prep, "cv": sweep.sweep_dir}


def _manifest_ids(prep: Path) -> list[str]:
    with open(prep / "manifest.csv", newline="", encoding="utf-8") as fh:
        return [r["image_id"] for r in csv.DictReader(fh)]


def test_fold_runs_follow_the_naming_and_test_once_on_their_fold(cv_runs: dict[str, Path]) -> None:
    cv_dir = cv_runs["cv"]
    assert cv_dir.name == "tiny-cv"
    test_ids: list[str] = []
    for k in range(K):
        run = cv_dir / f"fold_{k}"
        assert test_access_count(run) == 1 and (run / "decision.json").is_file()
        assert read_json(run / "decision.json")["selected_on"] == "val"
        val_pred, test_pred = (load_predictions(run / "predictions" / f"{s}.npz") for s in ("val", "test"))
        check_true_split(val_pred, "val", run)  # the fold's own split, not the manifest's split column
        check_true_split(test_pred, "test", run)
        val, test = val_pred.image_ids, test_pred.image_ids
        assert not set(val) & set(test)
        test_ids += test
    assert sorted(test_ids) == sorted(_manifest_ids(cv_runs["prep"]))  # every image in exactly one test fold
    assert len(read_json(cv_dir / "sweep.json")["results"]) == K


def test_cv_pools_every_image_once_at_each_folds_own_operating_point(cv_runs: dict[str, Path]) -> None:
    cv_dir = cv_runs["cv"]
    runs = [str(cv_dir / f"fold_{k}") for k in range(K)]
    res = CliRunner().invoke(app, ["cv", *runs, "--bootstrap", "50"])
    assert res.exit_code == 0, res.output
    pool = cv_dir / "pooled"
    pooled = load_predictions(pool / "predictions" / "test.npz")
    assert sorted(pooled.image_ids) == sorted(_manifest_ids(cv_runs["prep"]))
    assert len(set(pooled.image_ids)) == pooled.n
    metrics = read_json(pool / "metrics" / "test.json")
    assert metrics["n"] == pooled.n and metrics["kind"] == "cv" and metrics["dice_pos_ci95"] is not None
    assert set(metrics["per_fold"]["dice_pos"]) == {"values", "mean", "sd"}
    assert len(metrics["per_fold"]["dice_pos"]["values"]) == K
    for k in range(K):
        assert test_access_count(cv_dir / f"fold_{k}") == 2  # its own test + the pool's score
    # each image is binarised exactly as its fold's decision did
    pooled_stats = compute_per_image_stats(pooled, read_json(pool / "decision.json"))
    pos = {i: n for n, i in enumerate(pooled.image_ids)}
    for k in range(K):
        run = cv_dir / f"fold_{k}"
        fold = load_predictions(run / "predictions" / "test.npz")
        decision = read_json(run / "decision.json")
        own = compute_per_image_stats(fold, decision)
        idx = np.array([pos[i] for i in fold.image_ids])
        for key in ("inter", "pred_area", "gt_area", "n_hit", "n_fp"):
            assert np.array_equal(getattr(pooled_stats, key)[idx], getattr(own, key)), key
        from fxbench.evaluate import resolve_presence_source

        src = resolve_presence_source(fold, decision["presence_source"])
        want = fold.presence[src] >= np.float32(decision["presence_threshold"])
        assert np.array_equal(pooled.presence["cv"][idx] >= np.float32(0.5), want)
    # the pool is an ordinary sealed result folder: compare reads it, logged in it and its fold runs
    res = CliRunner().invoke(app, ["compare", str(pool), str(pool), "--split", "test", "--bootstrap", "50", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert all(r["delta"] == 0.0 and r["p_value"] == 1.0 for r in doc["comparisons"][0]["metrics"].values())
    assert test_access_count(pool) == 3 and test_access_count(cv_dir / "fold_0") == 4
    assert read_json(pool / "metrics" / "test.json")["dice_pos"] == metrics["dice_pos"]  # same numbers
    assert read_json(pool / "metrics" / "test.json")["kind"] == "cv"
    # a pool is scored once
    again = CliRunner().invoke(app, ["cv", *runs])
    assert again.exit_code == 4, again.output
    # folds must not overlap
    twice = CliRunner().invoke(app, ["cv", runs[0], runs[0], "--out", str(cv_dir / "p2")])
    assert twice.exit_code == 3, twice.output


def test_compare_a_run_with_itself_gives_zero_differences_and_p_one(cv_runs: dict[str, Path], tmp_path: Path) -> None:
    run = cv_runs["cv"] / "fold_0"
    before = test_access_count(run)
    for split in ("val", "test"):
        out = tmp_path / f"{split}.json"
        res = CliRunner().invoke(app, ["compare", str(run), str(run), "--split", split, "--bootstrap", "100",
                                       "--out", str(out), "--boxes", "--box-bootstrap", "20"])
        assert res.exit_code == 0, res.output
        doc = json.loads(out.read_text())
        (comp,) = doc["comparisons"]
        assert comp["metrics"]
        for r in comp["metrics"].values():
            assert r["delta"] == 0.0 and r["p_value"] == 1.0
            assert r["delta_ci95"] in ([0.0, 0.0], [None, None])
        assert comp["delong"]["delta"] == 0.0 and comp["delong"]["p_value"] == 1.0
        assert comp["mcnemar"]["delta"] == 0.0 and comp["mcnemar"]["p_value"] == 1.0
        assert set(comp["boxes"]) == {"box_ap50", "box_ap50_95", "froc_mean"}
        for r in comp["boxes"].values():
            assert r["delta"] in (0.0, None) and r["p_value"] in (1.0, None)
    assert test_access_count(run) == before + 2  # the test comparison read the artifact twice


def test_compare_refuses_other_images_and_unsealed_test(cv_runs: dict[str, Path], tmp_path: Path) -> None:
    cv_dir = cv_runs["cv"]
    res = CliRunner().invoke(app, ["compare", str(cv_dir / "fold_0"), str(cv_dir / "fold_1"), "--split", "val"])
    assert res.exit_code == 3 and "different images" in res.output, res.output
    unsealed = tmp_path / "unsealed"
    shutil.copytree(cv_dir / "fold_0", unsealed)
    (unsealed / "test_access.log").unlink()
    res = CliRunner().invoke(app, ["compare", str(cv_dir / "fold_0"), str(unsealed), "--split", "test"])
    assert res.exit_code == 4 and "no sealed test artifact" in res.output, res.output


def _fake_folder(root: Path, name: str, pred: Predictions, dice: float, source: str = "head") -> Path:
    folder = root / name
    save_predictions(folder / "predictions" / "val.npz", pred)
    write_json_atomic(folder / "metrics" / "val.json", {"dice_pos": dice, "threshold": 0.5, "presence_source": source,
                                                         "presence_threshold": 0.05, "min_component": 0})
    return folder


def test_compare_holm_and_report_marks_significantly_worse_rows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n, s = 60, 16
    labels = (np.arange(n) % 3 == 0).astype(np.uint8)
    masks = np.zeros((n, s, s), np.uint8)
    masks[labels.astype(bool), 4:10, 4:10] = 1
    good = np.clip(masks * 0.9 + rng.random((n, s, s)) * 0.2, 0, 1)
    bad = np.clip(masks * 0.5 + rng.random((n, s, s)) * 0.7, 0, 1)  # false positives outside the mask

    def pred(probs: np.ndarray, sep: float) -> Predictions:
        head = np.clip(labels * sep + rng.random(n) * (1 - sep), 0, 1)
        return Predictions(image_ids=[f"i{k}" for k in range(n)], probs=probs, masks=masks,
                           boxes=np.tile([0, 0, s, s], (n, 1)), native_hw=np.tile([s, s], (n, 1)),
                           presence={"head": head}, labels=labels, meta={"split": "val"})

    a = _fake_folder(tmp_path, "a", pred(good, 0.6), 0.9)
    b = _fake_folder(tmp_path, "b", pred(bad, 0.1), 0.3)
    c = _fake_folder(tmp_path, "c", pred(good, 0.6), 0.89)
    out = tmp_path / "cmp.json"
    res = CliRunner().invoke(app, ["compare", str(a), str(b), str(c), "--bootstrap", "200", "--out", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    cb, cc = doc["comparisons"]
    assert cb["metrics"]["dice_pos"]["worse"] and cb["metrics"]["dice_pos"]["p_holm"] < 0.05
    assert cb["metrics"]["dice_pos"]["p_holm"] >= cb["metrics"]["dice_pos"]["p_value"]
    assert not cc["metrics"]["dice_pos"]["worse"]
    res = CliRunner().invoke(app, ["report", str(a), str(b), str(c), "--out", str(tmp_path / "rep"), "--no-plots",
                                   "--significance"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in read_json(tmp_path / "rep" / "report.json")["rows"]}
    assert "dice_pos" in rows["b"]["worse_than_best"] and rows["a"]["worse_than_best"] == []
    assert "dice_pos" not in rows["c"]["worse_than_best"]
    assert "↓" in (tmp_path / "rep" / "leaderboard.md").read_text(encoding="utf-8")
    # a derived presence source (pred_area: exists only at the operating point) compares too
    d = _fake_folder(tmp_path, "d", pred(good, 0.6), 0.9, source="pred_area")
    res = CliRunner().invoke(app, ["compare", str(a), str(d), "--bootstrap", "50", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["runs"][1]["presence_source"] == "pred_area"


def test_skip_existing_finishes_a_trained_but_untested_fold(cv_runs: dict[str, Path], tmp_path: Path) -> None:
    """A fold run stopped after training (no tune, no test yet) is not 'skipped': --skip-existing
    tunes and tests it without re-training; once tested, it is skipped."""
    import hashlib

    from fxbench.launch.jobs import run_job, sweep_jobs

    cv_dir = tmp_path / "runs" / "tiny-cv"
    shutil.copytree(cv_runs["cv"] / "fold_0", cv_dir / "fold_0")
    run = cv_dir / "fold_0"
    for rel in ("decision.json", "test_access.log"):
        (run / rel).unlink()
    for rel in ("tune", "metrics", "predictions"):
        shutil.rmtree(run / rel, ignore_errors=True)
    ckpts = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run / "checkpoints").glob("*.pt")}
    cfg = load_config(run / "config.resolved.yaml", [], environ={})
    job = sweep_jobs(cfg, tmp_path / "runs", "tiny", folds=[0]).jobs[0]
    assert Path(job.run_dir) == run
    first = run_job(job, skip_existing=True)
    assert first.status == "finished", first.reason
    assert test_access_count(run) == 1 and (run / "decision.json").is_file()
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (run / "checkpoints").glob("*.pt")} == ckpts
    assert run_job(job, skip_existing=True).status == "skipped"
    assert test_access_count(run) == 1


def test_compare_labels_tell_folders_with_one_name_apart(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from fxbench.select.compare import name_apart

    inputs = [SimpleNamespace(folder=tmp_path / r / "pooled", name="pooled") for r in ("dual-cv", "plain-cv")]
    name_apart(inputs)  # type: ignore[arg-type]
    assert [i.name for i in inputs] == ["dual-cv/pooled", "plain-cv/pooled"]
    same = [SimpleNamespace(folder=tmp_path / "a", name="a"), SimpleNamespace(folder=tmp_path / "a", name="a")]
    name_apart(same)  # type: ignore[arg-type]
    assert [i.name for i in same] == ["a", "a"]
    apart = [SimpleNamespace(folder=tmp_path / n, name=n) for n in ("a", "b")]
    name_apart(apart)  # type: ignore[arg-type]
    assert [i.name for i in apart] == ["a", "b"]
