"""`fxbench bench` (fxbench.train.bench) end to end on CPU at 64 px: one row per model with the
three training loops, inference, and ratios computed from them (no speed is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fxbench.cli.app import app


def test_bench_writes_one_row_per_model_with_consistent_ratios(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(app, [
        "bench", "--device", "cpu", "--models", "unet_dual:64", "--n-images", "12", "--batch", "4",
        "--steps", "2", "--seed-steps", "2", "--warmup", "1", "--image-scale", "0.2", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    body = json.loads(out.read_text())
    assert (body["n_images"], body["steps"], body["seed_steps"]) == (12, 2, 2)
    (row,) = body["rows"]
    assert (row["model"], row["image_size"], row["batch"]) == ("unet_dual", 64, 4)
    for key in ("seed_loop", "fxbench", "ceiling", "infer", "infer_hv"):
        assert row[key] > 0, key
    assert row["b_over_a"] == pytest.approx(row["fxbench"] / row["seed_loop"], abs=2e-3)
    assert row["b_over_c"] == pytest.approx(row["fxbench"] / row["ceiling"], abs=2e-3)
