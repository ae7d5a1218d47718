"""Leaderboard (Markdown + JSON) and PNG plots from saved result folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from fxbench.artifacts.predictions import Predictions, save_predictions
from fxbench.cli.app import app
from fxbench.data.cache import write_cache
from fxbench.errors import DataError
from fxbench.evaluate import evaluate_predictions
from fxbench.io import sha256_file, write_csv_atomic, write_json_atomic
from fxbench.report import build_report
from fxbench.report.leaderboard import build_leaderboard, discover, render_markdown
from fxbench.report.plots import select_cases
from fxbench.select.ensemble import run_ensemble
from fxbench.select.seal import log_test_access
from fxbench.select.tune import tune_run

S = 32
runner = CliRunner()


def make_pred(split: str, seed: int, prepared: Path | None = None, cache_sha: str | None = None, n: int = 16) -> Predictions:
    gt_rng = np.random.default_rng(len(split))
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, S, S), np.uint8)
    probs = rng.uniform(0.0, 0.3, (n, S, S)).astype(np.float32)
    for i in range(0, n, 2):
        r, c = gt_rng.integers(4, S - 12, 2)
        size = 3 + i % 6  # lesions of different sizes -> different per-image Dice
        masks[i, r:r + size, c:c + size] = 1
        probs[i, r:r + 6, c:c + 6] = rng.uniform(0.4, 0.95, (6, 6))
    labels = masks.reshape(n, -1).any(axis=1)
    meta = {"split": split, "tta": "hv", "split_sha256": "ab" * 32, "cache_sha256": cache_sha, "prepared": str(prepared) if prepared else None}
    return Predictions(
        image_ids=[f"{split}_{i:03d}" for i in range(n)], probs=probs, masks=masks,
        boxes=np.tile([2, 0, S - 4, S], (n, 1)), native_hw=np.full((n, 2), [60, 64]),
        presence={"head": np.clip(labels * 0.5 + rng.uniform(0, 0.5, n), 0, 1).astype(np.float32),
                  "max": probs.reshape(n, -1).max(axis=1)},
        labels=labels, meta=meta,
    )


def make_prepared(root: Path) -> tuple[Path, str]:
    """A prepared folder with just a 32 px cache holding the val and test images."""
    prep = root / "prep"
    ids = sorted([f"test_{i:03d}" for i in range(16)] + [f"val_{i:03d}" for i in range(16)])
    rng = np.random.default_rng(0)
    n = len(ids)
    path = write_cache(prep / "cache" / f"{S}.npz", ids, rng.integers(0, 255, (n, S, S), dtype=np.uint8),
                       np.zeros((n, S, S), np.uint8), np.tile([2, 0, S - 4, S], (n, 1)), np.full((n, 2), [60, 64]))
    write_json_atomic(prep / "prepare_report.json", {"split_mode": "grouped", "split_sha256": "ab" * 32})
    return prep, sha256_file(path)


def make_full_run(root: Path, name: str, seed: int, prep: Path, cache_sha: str) -> Path:
    """A run folder as train + eval + tune + sealed eval leave it (metrics via fxbench.evaluate)."""
    run = root / name
    for split in ("val", "test"):
        save_predictions(run / "predictions" / f"{split}.npz", make_pred(split, seed + len(split), prep, cache_sha))
    decision = tune_run(run).decision
    for split in ("val", "test"):
        from fxbench.artifacts.predictions import load_predictions

        m = evaluate_predictions(load_predictions(run / "predictions" / f"{split}.npz"), decision.to_dict(), bootstrap=50)
        m.update(decision_source=decision.source, tta="hv")
        write_json_atomic(run / "metrics" / f"{split}.json", m)
    log_test_access(run, decision.sha256(), "fxbench eval r --split test")
    history = [{"epoch": e, "lr": 1e-3 / e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_dice_pos": 0.1 * e,
                "val_roc_auc_presence": 0.5 + 0.05 * e, "best": int(e == 3)} for e in range(1, 5)]
    write_csv_atomic(run / "history.csv", history, list(history[0]))
    write_json_atomic(run / "run.json", {"split_sha256": "ab" * 32, "prepared": str(prep)})
    return run


@pytest.fixture()
def runs(tmp_path: Path) -> Path:
    prep, sha = make_prepared(tmp_path)
    root = tmp_path / "runs"
    a = make_full_run(root, "alpha", 1, prep, sha)
    b = make_full_run(root, "beta", 2, prep, sha)
    log_test_access(b, "0" * 64, "fxbench eval beta --split test")  # beta looked at test twice
    run_ensemble([a, b], root / "ens", bootstrap=50, command="fxbench ensemble")
    val_only = root / "gamma"
    save_predictions(val_only / "predictions" / "val.npz", make_pred("val", 9, prep, sha))
    m = evaluate_predictions(make_pred("val", 9), {"threshold": 0.5}, bootstrap=0)
    write_json_atomic(val_only / "metrics" / "val.json", m)
    return root


def test_leaderboard_rows_carry_the_metrics(runs: Path) -> None:
    rows = build_leaderboard([runs])
    by = {r["name"]: r for r in rows}
    assert set(by) == {"alpha", "beta", "ens", "gamma"}
    assert [r["split"] for r in rows] == ["test", "test", "test", "val"]  # test rows first, val last
    dice = [r["dice_pos"] for r in rows[:3]]
    assert dice == sorted(dice, reverse=True)
    for name in ("alpha", "beta", "ens"):
        m = json.loads((runs / name / "metrics" / "test.json").read_text())
        r = by[name]
        assert r["dice_pos"] == pytest.approx(m["dice_pos"])
        assert r["dice_pos_ci95"] == pytest.approx(m["dice_pos_ci95"])
        assert r["roc_auc_presence_ci95"] == pytest.approx(m["roc_auc_presence_ci95"])
        assert r["average_precision_presence"] == pytest.approx(m["average_precision_presence"])
        assert r["decision_source"] == "tune" and r["split_sha256"] == "ab" * 32 and r["tta"] == "hv"
    assert by["alpha"]["split_mode"] == "grouped"  # from run.json -> prepare_report.json
    # access counts follow the data: the ensemble's test scoring is on its members' logs too
    assert (by["alpha"]["test_accesses"], by["beta"]["test_accesses"], by["ens"]["test_accesses"]) == (2, 3, 1)
    assert (by["alpha"]["max_test_accesses"], by["ens"]["max_test_accesses"]) == (2, 3)
    assert by["ens"]["kind"] == "ensemble" and by["alpha"]["kind"] == "run"
    assert by["gamma"]["test_accesses"] == 0 and by["gamma"]["decision_source"] == "unspecified"
    md = render_markdown(rows)
    assert "| alpha | run | test |" in md and "| gamma | run | val |" in md
    lo, hi = by["alpha"]["dice_pos_ci95"]
    assert f"{by['alpha']['dice_pos']:.3f} [{lo:.3f}, {hi:.3f}]" in md


def test_report_writes_files_and_pngs_that_open(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = build_report([runs], out)
    assert json.loads((out / "leaderboard.json").read_text())["rows"][0]["name"] == summary["rows"][0]["name"]
    assert (out / "leaderboard.md").read_text().startswith("# fxbench leaderboard")
    pngs = sorted(out.rglob("*.png"))
    names = {p.relative_to(out).as_posix() for p in pngs}
    for expected in ("roc_test.png", "pr_test.png", "calibration_test.png", "roc_val.png",
                     "plots/alpha/roc.png", "plots/alpha/pr.png", "plots/alpha/calibration.png",
                     "plots/alpha/training.png", "plots/alpha/threshold.png", "plots/alpha/cases_best.png",
                     "plots/alpha/cases_worst.png", "plots/ens/cases_worst.png"):
        assert expected in names, expected
    for p in pngs:
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100
    report_md = (out / "report.md").read_text()
    assert "![cases_worst](plots/alpha/cases_worst.png)" in report_md


def test_overlay_cases_are_best_and_worst_by_dice(runs: Path) -> None:
    from fxbench.artifacts.predictions import load_predictions
    from fxbench.evaluate import compute_per_image_stats

    pred = load_predictions(runs / "alpha" / "predictions" / "test.npz")
    decision = json.loads((runs / "alpha" / "decision.json").read_text())
    stats = compute_per_image_stats(pred, decision, lesions=False)
    pos = stats.dice[stats.gt_positive]
    worst = select_cases(pred, decision, "worst", 3)
    best = select_cases(pred, decision, "best", 3)
    assert [d for _, d in worst] == pytest.approx(sorted(pos)[:3])
    assert [d for _, d in best] == pytest.approx(sorted(pos, reverse=True)[:3])
    assert all(pred.labels[i] for i, _ in worst + best)


def test_report_cli_and_errors(runs: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["report", str(runs / "alpha"), str(runs / "ens"), "--out", str(tmp_path / "r"), "--no-plots", "--json"])
    assert res.exit_code == 0, res.output
    assert not list((tmp_path / "r").rglob("*.png"))
    assert (tmp_path / "r" / "leaderboard.md").is_file()
    assert runner.invoke(app, ["report", str(tmp_path / "nope"), "--out", str(tmp_path / "r2")]).exit_code == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        discover([tmp_path / "empty"])


def test_seed_spread_mean_and_sd() -> None:
    from fxbench.report.leaderboard import seed_groups

    rows = [
        {"path": f"/x/recipe-sweep/seed_{s}", "name": f"seed_{s}", "split": "test", "dice_pos": d,
         "roc_auc_presence": 0.9, "average_precision_presence": None, "iou_pos": d / 2}
        for s, d in ((0, 0.40), (1, 0.44), (2, 0.48))
    ] + [{"path": "/x/other", "name": "other", "split": "test", "dice_pos": 0.1, "roc_auc_presence": 0.5,
          "average_precision_presence": 0.2, "iou_pos": 0.05}]
    (group,) = seed_groups(rows)
    assert group["recipe"] == "recipe" and group["seeds"] == 3
    assert abs(group["dice_pos_mean"] - 0.44) < 1e-12 and abs(group["dice_pos_sd"] - 0.04) < 1e-12
    assert group["roc_auc_presence_sd"] == 0.0 and group["average_precision_presence_mean"] is None
