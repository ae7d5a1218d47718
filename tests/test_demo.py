"""`fxbench demo` runs the whole protocol end to end (reduced size for the test suite)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from fxbench.cli.app import app


def test_demo_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--n-images", "60", "--epochs", "2"])
    assert result.exit_code == 0, result.output
    run = out / "runs" / "demo-unet-dual"
    metrics = json.loads((run / "metrics" / "test.json").read_text())
    for key in ("dice_pos", "roc_auc_presence", "average_precision_presence"):
        assert key in metrics and f"{key}_ci95" in metrics
    assert metrics["decision_source"] == "tune"
    assert len((run / "test_access.log").read_text().splitlines()) == 1
    assert (out / "report" / "leaderboard.md").is_file()
    # Box metrics (issue 16): components of the test maps scored as boxes, in the JSON and the report.
    boxes = metrics["boxes"]
    assert {"box_ap50", "box_ap50_95", "froc_mean", "box_ap50_ci95"} <= set(boxes)
    assert boxes["n_gt_boxes"] > 0 and 0.0 <= boxes["box_ap50"] <= 1.0
    report_md = (out / "report" / "report.md").read_text()
    assert "## Boxes (detection)" in report_md and f"{boxes['box_ap50']:.3f}" in report_md
    assert "box_ap50" in result.output
    _recompute_independently(run, metrics)
    assert "dice_pos" in result.output
    last = result.output.strip().splitlines()[-1]
    assert last == f"report with plots: {out / 'report' / 'report.md'}" and (out / "report" / "report.md").is_file()
    assert "prepare --archive <zip>" not in result.output
    # eval --split test names the metrics file it wrote and the next step
    res = CliRunner().invoke(app, ["eval", str(run), "--split", "test", "--decision", str(run / "decision.json")])
    assert res.exit_code == 0, res.output
    assert f"wrote {run}/metrics/test.json; next: fxbench report {run} --out report" in res.output
    # A val evaluation may pick any TTA; the stale decision then no longer opens the test split.
    val = CliRunner().invoke(app, ["eval", str(run), "--split", "val", "--tta", "hv"])
    assert val.exit_code == 0, val.output
    assert json.loads((run / "metrics" / "val.json").read_text())["tta"] == "hv"
    stale = CliRunner().invoke(app, ["eval", str(run), "--split", "test", "--decision", str(run / "decision.json")])
    assert stale.exit_code == 4 and "sha256" in stale.output
    again = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output


def _recompute_independently(run: Path, metrics: dict) -> None:
    """metrics/test.json agrees with a from-scratch numpy/sklearn recomputation from the npz."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    decision = json.loads((run / "decision.json").read_text())
    with np.load(run / "predictions" / "test.npz", allow_pickle=False) as z:
        probs = z["probs"].astype(np.float32)
        gts = z["masks"].astype(bool)
        scores = z[f"presence_{metrics['presence_source']}"].astype(np.float64)
    pred = probs >= np.float32(decision["threshold"])
    pos = gts.reshape(len(gts), -1).any(1)
    inter = (pred & gts).reshape(len(gts), -1).sum(1)
    dice = (2 * inter + 1e-6) / (pred.reshape(len(gts), -1).sum(1) + gts.reshape(len(gts), -1).sum(1) + 1e-6)
    assert abs(dice[pos].mean() - metrics["dice_pos"]) < 1e-9
    assert abs(roc_auc_score(pos, scores) - metrics["roc_auc_presence"]) < 1e-9
    assert abs(average_precision_score(pos, scores) - metrics["average_precision_presence"]) < 1e-9


def test_demo_default_folder_is_outside_the_current_folder(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fxbench.paths import demo_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FXBENCH_HOME", raising=False)
    assert tmp_path not in demo_dir().parents and demo_dir().name == "demo"
    monkeypatch.setenv("FXBENCH_HOME", str(tmp_path / "home"))
    assert demo_dir() == tmp_path / "home" / "demo"
    (demo_dir()).mkdir(parents=True)
    (demo_dir() / "old").write_text("an earlier demo")
    res = CliRunner().invoke(app, ["demo"])  # the default folder, already used: refused before any work
    assert res.exit_code == 2 and str(tmp_path / "home" / "demo") in res.output and "--force" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # nothing written into the cwd
