"""What a newcomer sees first: the report's plots say what they draw (issue #14)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from test_report import make_full_run, make_prepared

from fxbench.data.cache import write_cache
from fxbench.io import read_json, write_json_atomic
from fxbench.report import build_report


def test_threshold_plot_draws_decision_json_not_an_eval_at_the_default(tmp_path: Path) -> None:
    prep, sha = make_prepared(tmp_path)
    run = make_full_run(tmp_path / "runs", "alpha", 1, prep, sha)
    decision = read_json(run / "decision.json")
    val = read_json(run / "metrics" / "val.json")
    val["threshold"] = 0.5 if decision["threshold"] != 0.5 else 0.35  # an eval at another threshold
    write_json_atomic(run / "metrics" / "val.json", val)
    summary = build_report([run], tmp_path / "report")
    shown = json.loads((tmp_path / "report" / "report.json").read_text())["plot_values"]["alpha"]
    assert shown["threshold"]["threshold"] == decision["threshold"] != val["threshold"]
    assert summary["plot_values"]["alpha"]["threshold"]["from"] == str(run / "decision.json")


def test_case_panels_never_repeat_and_say_what_the_background_is(tmp_path: Path) -> None:
    prep, sha = make_prepared(tmp_path)
    run = make_full_run(tmp_path / "runs", "alpha", 1, prep, sha)  # 8 positives per split
    out = build_report([run], tmp_path / "r1", cases=6)["plot_values"]["alpha"]
    best = [c["image_id"] for c in out["cases_best"]["cases"]]
    worst = [c["image_id"] for c in out["cases_worst"]["cases"]]
    assert len(best) == 4 and len(worst) == 4 and not set(best) & set(worst)
    assert min(c["dice"] for c in out["cases_best"]["cases"]) >= max(c["dice"] for c in out["cases_worst"]["cases"])
    assert out["cases_best"]["background"] == "X-ray (cache 32.npz)"
    # Only a cache of another size (64 px): the X-ray is drawn from it, resized.
    c32 = np.load(prep / "cache" / "32.npz")
    ids = [str(s) for s in c32["image_ids"]]
    n = len(ids)
    (prep / "cache" / "32.npz").unlink()
    write_cache(prep / "cache" / "64.npz", ids, np.zeros((n, 64, 64), np.uint8), np.zeros((n, 64, 64), np.uint8),
                np.tile([4, 0, 56, 64], (n, 1)), np.full((n, 2), [60, 64]))
    out = build_report([run], tmp_path / "r2", cases=6)["plot_values"]["alpha"]
    assert out["cases_worst"]["background"] == "X-ray (cache 64.npz)"
    # No image at hand: the probability map, and the report says so.
    (prep / "cache" / "64.npz").unlink()
    out = build_report([run], tmp_path / "r3", cases=6)["plot_values"]["alpha"]
    assert out["cases_best"]["background"].startswith("probability map (no letterbox image cache in")
