"""The sealed test without holes (issue 11): one CLI test per known way around the seal.

Everything is driven through the CLI (typer's CliRunner) on the session's tiny synthetic
archive (``prepared`` in conftest.py). Each test would pass on a seal with that hole and fails
here only if the hole is open again.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from fxbench.artifacts.predictions import load_predictions, save_predictions
from fxbench.cli.app import app
from fxbench.select.seal import read_test_access, test_access_count

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def one_thread():  # type: ignore[no-untyped-def]
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def cli(*args: object) -> tuple[int, str]:
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exception is None or isinstance(res.exception, SystemExit), res.output
    return res.exit_code, res.output


def tiny_sets(prepared: Path, seed: int) -> list[str]:
    sets = {
        "data.prepared": prepared, "data.image_size": 64, "data.cache_size": 64, "model.name": "unet_dual",
        "model.base_channels": 8, "train.epochs": 1, "train.batch_size": 8, "train.max_steps_per_epoch": 2,
        "train.eval_batch_size": 16, "train.seed": seed, "eval.bootstrap": 0, "runtime.device": "cpu",
        "runtime.channels_last": "false", "runtime.num_threads": 1, "train.selection_metric": "neg_loss",
    }
    return [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module")
def runs(prepared: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two tiny trained runs with val and test predictions; run ``a`` is tuned on its val."""
    from fxbench.predict.infer import predict_split

    root = tmp_path_factory.mktemp("seal_runs")
    out: dict[str, Path] = {}
    for name, seed in (("a", 1), ("b", 2)):
        run = root / name
        code, text = cli("train", "--quiet", *tiny_sets(prepared, seed), "--run-dir", run)
        assert code == 0, text
        out[name] = run
    code, text = cli("eval", out["a"], "--split", "val", "--bootstrap", "0")
    assert code == 0, text
    code, text = cli("tune", out["a"])
    assert code == 0, text
    for name in ("a", "b"):
        predict_split(out[name], "test")  # predictions only: no test number, no access
    return out


def fresh(run: Path, tmp_path: Path, name: str | None = None) -> Path:
    """A private copy of a fixture run (tests must not share their access logs)."""
    return Path(shutil.copytree(run, tmp_path / (name or run.name)))


def error_text(output: str) -> str:
    return " ".join(output.split())


# ------------------------------------------------------------------------------- hole 1


def test_hole1_a_decision_from_another_run_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    a, b = runs["a"], fresh(runs["b"], tmp_path)
    (b / "predictions" / "val.npz").unlink(missing_ok=True)  # b has no val predictions at all
    code, text = cli("eval", b, "--split", "test", "--decision", a / "decision.json", "--bootstrap", "0")
    assert code == 4, text
    assert "was not tuned in" in error_text(text)
    assert not (b / "metrics" / "test.json").exists() and test_access_count(b) == 0
    # a copy of a's decision.json inside b is still a's decision
    shutil.copy(a / "decision.json", b / "decision.json")
    code, text = cli("eval", b, "--split", "test", "--decision", b / "decision.json", "--bootstrap", "0")
    assert code == 4 and test_access_count(b) == 0, text


def test_missing_val_artifact_is_a_refusal(runs: dict[str, Path], tmp_path: Path) -> None:
    a = fresh(runs["a"], tmp_path)
    (a / "predictions" / "val.npz").unlink()
    code, text = cli("eval", a, "--split", "test", "--decision", a / "decision.json", "--bootstrap", "0")
    assert code == 4 and "missing val artifact is refused" in error_text(text), text
    assert test_access_count(a) == 0


# ------------------------------------------------------------------------------- hole 2


@pytest.mark.parametrize("edit", ["threshold", "null_sha", "drop_sha", "drop_digest"])
def test_hole2_a_hand_edited_decision_is_refused(runs: dict[str, Path], tmp_path: Path, edit: str) -> None:
    a = fresh(runs["a"], tmp_path)
    path = a / "decision.json"
    d = json.loads(path.read_text())
    if edit == "threshold":
        d["threshold"] = 0.35 if d["threshold"] != 0.35 else 0.4
    elif edit == "null_sha":
        d["val_predictions_sha256"] = None
    elif edit == "drop_sha":
        del d["val_predictions_sha256"]
    else:
        del d["content_sha256"]
    path.write_text(json.dumps(d))
    code, text = cli("eval", a, "--split", "test", "--decision", path, "--bootstrap", "0")
    assert code == 4, text
    assert "--threshold" in error_text(text)  # the fix names the honest alternative
    assert not (a / "metrics" / "test.json").exists() and test_access_count(a) == 0


def test_hole2_user_fixed_is_labelled_everywhere(runs: dict[str, Path], tmp_path: Path) -> None:
    a = fresh(runs["a"], tmp_path)
    code, text = cli("eval", a, "--split", "test", "--threshold", "0.4", "--bootstrap", "0")
    assert code == 0, text
    assert "user-fixed" in text
    metrics = json.loads((a / "metrics" / "test.json").read_text())
    assert metrics["decision_source"] == "user-fixed" and "not chosen on val" in metrics["decision_label"]
    code, shown = cli("show", a)
    assert code == 0 and "user-fixed" in shown, shown
    code, rep = cli("report", a, "--out", tmp_path / "rep", "--no-plots", "--json")
    assert code == 0, rep
    row = json.loads(rep.splitlines()[0])[0]
    assert row["split"] == "test" and row["decision_source"] == "user-fixed"


def test_the_untouched_decision_still_opens_the_test_split(runs: dict[str, Path], tmp_path: Path) -> None:
    a = fresh(runs["a"], tmp_path)
    code, text = cli("eval", a, "--split", "test", "--decision", a / "decision.json", "--bootstrap", "0")
    assert code == 0, text
    metrics = json.loads((a / "metrics" / "test.json").read_text())
    assert metrics["decision_source"] == "tune" and metrics["kind"] == "run" and metrics["test_accesses"] == 1
    assert read_test_access(a)[0]["decision_source"] == "tune"


# ------------------------------------------------------------------------------- hole 3


@pytest.mark.parametrize("how", ["copy", "restamp"])
@pytest.mark.parametrize("verb", ["ensemble", "blend"])
def test_hole3_test_copies_as_val_inputs_are_refused(runs: dict[str, Path], tmp_path: Path, verb: str,
                                                     how: str) -> None:
    members = [fresh(runs[n], tmp_path) for n in ("a", "b")]
    for run in members:
        test_art = run / "predictions" / "test.npz"
        if how == "copy":
            shutil.copy(test_art, run / "predictions" / "val.npz")
        else:  # the test artifact re-stamped as val: its image ids still give it away
            pred = load_predictions(test_art)
            pred.meta["split"] = "val"
            save_predictions(run / "predictions" / "val.npz", pred)
            test_art.unlink()
    out = tmp_path / f"{verb}-out"
    extra = ["--alpha-step", "0.5", "--beta-step", "0.5"] if verb == "blend" else []
    code, text = cli(verb, *members, "--out", out, "--bootstrap", "0", "--no-test", *extra)
    assert code == 4, text
    assert "test" in error_text(text)
    assert not (out / "decision.json").exists()


def test_ensemble_val_artifact_records_its_true_split_and_ids(runs: dict[str, Path], tmp_path: Path) -> None:
    a, b = fresh(runs["a"], tmp_path), fresh(runs["b"], tmp_path)
    assert cli("eval", b, "--split", "val", "--bootstrap", "0")[0] == 0
    out = tmp_path / "ens"
    code, text = cli("ensemble", a, b, "--out", out, "--bootstrap", "0")
    assert code == 0, text
    val = load_predictions(out / "predictions" / "val.npz")
    test = load_predictions(out / "predictions" / "test.npz")
    assert val.meta["split"] == "val" and test.meta["split"] == "test"
    assert not set(val.image_ids) & set(test.image_ids)


# ------------------------------------------------------------------------------- hole 4


def test_hole4_peer_scoring_on_test_is_sealed_and_counted(runs: dict[str, Path], prepared: Path,
                                                          tmp_path: Path) -> None:
    import csv

    with open(prepared / "manifest.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    masks = tmp_path / "peer_masks"
    masks.mkdir()
    for r in rows:  # an empty mask per test image, at native size
        w, h = int(r["width"]), int(r["height"])
        Image.fromarray(np.zeros((h, w), np.uint8)).save(masks / f"{Path(r['image_id']).stem}.png")
    for k in (1, 2):
        code, text = cli("eval", "--predictions", masks, "--prepared", prepared, "--split", "test", "--bootstrap", "0")
        assert code == 0, text
        assert "peer" in text and "test accesses for peer folder" in error_text(text)
        folder = masks.parent / "peer_masks.fxbench-peer"
        metrics = json.loads((folder / "metrics" / "test.json").read_text())
        assert metrics["kind"] == "peer" and metrics["test_accesses"] == k
        assert test_access_count(folder) == k and read_test_access(folder)[-1]["kind"] == "peer"


# ------------------------------------------------------------------------------- weaker spots


def test_access_counts_follow_the_data(runs: dict[str, Path], tmp_path: Path) -> None:
    a, b = fresh(runs["a"], tmp_path), fresh(runs["b"], tmp_path)
    assert cli("eval", b, "--split", "val", "--bootstrap", "0")[0] == 0
    for k, name in ((1, "ens1"), (2, "ens2")):
        code, text = cli("ensemble", a, b, "--out", tmp_path / name, "--bootstrap", "0")
        assert code == 0, text
        metrics = json.loads((tmp_path / name / "metrics" / "test.json").read_text())
        assert metrics["test_accesses"] == 1  # the ensemble folder itself: once
        assert metrics["member_test_accesses"] == {"a": k, "b": k}
        assert metrics["max_test_accesses"] == k
        assert test_access_count(a) == k and test_access_count(b) == k
        assert read_test_access(a)[-1]["via"] == str((tmp_path / name).resolve())
    code, shown = cli("show", tmp_path / "ens1")
    assert code == 0 and "max over the runs it is built from: 2" in error_text(shown), shown
    code, rep = cli("report", tmp_path / "ens1", tmp_path / "ens2", a, "--out", tmp_path / "rep", "--no-plots", "--json")
    assert code == 0, rep
    by = {r["name"]: r for r in json.loads(rep.splitlines()[0])}
    assert (by["ens1"]["test_accesses"], by["ens1"]["max_test_accesses"]) == (1, 2)
    assert (by["a"]["test_accesses"], by["a"]["max_test_accesses"]) == (2, 2)
    assert "max accesses (built from)" in (tmp_path / "rep" / "leaderboard.md").read_text()


def test_which_last_with_a_decision_tuned_on_best_is_refused(runs: dict[str, Path], tmp_path: Path) -> None:
    a = fresh(runs["a"], tmp_path)
    code, text = cli("eval", a, "--split", "test", "--which", "last", "--decision", a / "decision.json",
                     "--bootstrap", "0")
    assert code == 4, text
    assert "best.pt" in error_text(text) and "--which" in error_text(text)
    assert test_access_count(a) == 0


# ------------------------------------------------------------------------------- ties, degenerate


def test_ties_and_degenerate_tuning_are_reported(tmp_path: Path) -> None:
    from fxbench.artifacts.predictions import Predictions

    n, s = 8, 16
    masks = np.zeros((n, s, s), np.uint8)
    masks[::2, 4:8, 4:8] = 1
    probs = np.ones((n, s, s), np.float32)  # "everything is fracture": recall 1 at every threshold
    run = tmp_path / "degenerate"
    save_predictions(run / "predictions" / "val.npz", Predictions(
        image_ids=[f"v{i}" for i in range(n)], probs=probs, masks=masks, boxes=np.tile([0, 0, s, s], (n, 1)),
        native_hw=np.full((n, 2), s), presence={"max": probs.reshape(n, -1).max(axis=1)},
        labels=masks.reshape(n, -1).any(axis=1), meta={"split": "val", "tta": "none"}))
    code, text = cli("tune", run)
    assert code == 0, text
    d = json.loads((run / "decision.json").read_text())
    assert len(d["ties"]) == 19 and d["ties"][0]["threshold"] == pytest.approx(0.05)
    assert any("recall_pos is 1.0" in r for r in d["degenerate"])
    assert any("empty_specificity" in r for r in d["degenerate"])
    flat = error_text(text)
    assert "tie: 19 grid points share the best val score" in flat and "degenerate tuning" in flat


def test_tune_refuses_a_test_artifact_copied_over_val(runs: dict[str, Path], tmp_path: Path) -> None:
    b = fresh(runs["b"], tmp_path)
    pred = load_predictions(b / "predictions" / "test.npz")
    pred.meta["split"] = "val"  # re-stamped: the manifest still knows these are test images
    save_predictions(b / "predictions" / "val.npz", pred)
    code, text = cli("tune", b)
    assert code == 4 and "test split" in error_text(text), text
    assert not (b / "decision.json").exists()


def test_blend_records_ties(runs: dict[str, Path], tmp_path: Path) -> None:
    # two copies of one run: every alpha and beta gives the same maps and scores -> a full tie
    a, twin = fresh(runs["a"], tmp_path), fresh(runs["a"], tmp_path, "twin")
    out = tmp_path / "bl"
    code, text = cli("blend", a, twin, "--out", out, "--alpha-step", "0.5", "--beta-step", "0.5", "--bootstrap", "0",
                     "--no-test")
    assert code == 0, text
    d = json.loads((out / "decision.json").read_text())
    assert len(d["ties"]) >= 9 and {t["alpha"] for t in d["ties"]} == {0.0, 0.5, 1.0}
    assert (d["ties"][0]["alpha"], d["ties"][0]["threshold"], d["ties"][0]["beta"]) == (d["alpha"], d["threshold"], d["beta"])
    assert f"tie: {len(d['ties'])} grid points share the best val score" in error_text(text)
