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
    assert "dice_pos" in result.output
    again = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output
