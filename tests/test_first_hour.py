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


# ---------------------------------------------------------------------------------- hints that work as printed


def _next(output: str) -> list[str]:
    """The command of the last ``next: ...`` line, split like a shell would (comment dropped)."""
    import shlex

    line = [ln for ln in output.splitlines() if ln.startswith("next: ")][-1]
    return shlex.split(line.removeprefix("next: ").split("   (")[0])


def test_data_hints_run_as_printed(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from fxbench.cli.app import app
    from fxbench.config import load_config
    from fxbench.data.cache import find_cache

    runner = CliRunner()
    monkeypatch.setenv("FXBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["synth", str(tmp_path / "fake"), "--n-images", "24", "--scale", "0.1"])
    assert res.exit_code == 0, res.output
    cmd = _next(res.output)
    assert cmd[:2] == ["fxbench", "prepare"] and "DIR" not in cmd
    res = runner.invoke(app, cmd[1:])  # the hint, verbatim
    assert res.exit_code == 0, res.output
    assert "split mode (seed)" not in res.output and "grouped mode, seed 42" in res.output
    # not a terminal: plain progress lines with rate and ETA, no bar
    assert "decoding images: 24/24 (100%)" in res.output and "/s" in res.output
    assert not [ln for ln in res.output.splitlines() if ln.startswith(("decoding images ", "reading annotations "))]
    train = _next(res.output)
    assert train[:2] == ["fxbench", "train"] and "data.image_size=64" in train  # the cache it made, not 256
    sets = [train[i + 1] for i, a in enumerate(train) if a == "--set"]
    cfg = load_config(None, sets, environ={})
    assert find_cache(cfg.data.prepared, cfg.data.image_size).name == "64.npz"
    # a cache the folder lacks: the error names the folder's own archive, and that command works
    from fxbench.errors import DataError

    try:
        find_cache(cfg.data.prepared, 128)
        raise AssertionError("no 128 cache expected")
    except DataError as err:
        hint = str(err.hint).strip("`").removeprefix("run `")
    assert f"--archive {tmp_path / 'fake'}" in hint
    import shlex

    res = runner.invoke(app, ["train", "--set", f"data.prepared={cfg.data.prepared}", "--set", "data.image_size=256",
                              "--run-dir", str(tmp_path / "runs" / "nope")])
    assert res.exit_code == 3 and not (tmp_path / "runs" / "nope").exists()  # no empty run folder left behind
    assert runner.invoke(app, shlex.split(hint)[1:]).exit_code == 0
    assert find_cache(cfg.data.prepared, 128).name == "128.npz"

    # download --from-file registers the zip: the hint relies on that (README's form) and works
    runner.invoke(app, ["synth", str(tmp_path / "fake.zip"), "--zip", "--n-images", "24", "--scale", "0.1"])
    res = runner.invoke(app, ["download", "--from-file", str(tmp_path / "fake.zip")])
    assert res.exit_code == 0, res.output
    cmd = _next(res.output)
    assert cmd == ["fxbench", "prepare", "--split-mode", "seed", "--cache-size", "256"]
    res = runner.invoke(app, [*cmd[1:-1], "64", "--out", str(tmp_path / "p2")])  # (smaller, same form)
    assert res.exit_code == 0, res.output


def test_prepare_on_a_local_non_archive_is_one_line(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fxbench.cli.app import app

    (tmp_path / "empty.zip").write_bytes(b"")
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    for bad in ("empty.zip", "passwd"):
        res = CliRunner().invoke(app, ["prepare", "--archive", str(tmp_path / bad), "--out", str(tmp_path / "o")])
        assert res.exit_code == 3
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "not a readable zip archive" in lines[0], lines
        assert "download --force" not in lines[0] and "FracAtlas.zip" in lines[0]
    assert "an empty file" in CliRunner().invoke(
        app, ["prepare", "--archive", str(tmp_path / "empty.zip"), "--out", str(tmp_path / "o")]).output


# ---------------------------------------------------------------------------------- config keys, completion


def test_config_keys_show_type_default_and_description() -> None:
    from typer.testing import CliRunner

    from fxbench.cli.app import app

    runner = CliRunner()
    res = runner.invoke(app, ["config", "keys", "image_size"])
    assert res.exit_code == 0, res.output
    line = res.stdout.strip()
    assert line.startswith("data.image_size") and "int = 256" in line and "multiple of 32" in line
    assert "Network input edge in pixels" in line
    names = runner.invoke(app, ["config", "keys", "--names"]).stdout.split()
    assert "optim.lr" in names and all(" " not in n for n in names)
    rows = json.loads(runner.invoke(app, ["config", "keys", "--json"]).stdout)
    assert [r["key"] for r in rows] == names
    assert "fxbench config keys" in runner.invoke(app, ["train", "--help"]).stdout


def _complete(line: str) -> list[str]:
    from typer.testing import CliRunner

    from fxbench.cli.app import app

    words = line.split(" ")
    res = CliRunner().invoke(app, [], prog_name="fxbench", env={
        "_FXBENCH_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1)})
    assert res.exit_code == 0, res.output
    return res.stdout.split()


def test_completion_of_split_and_set_values(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fxbench.models.registry import list_models

    monkeypatch.chdir(tmp_path)
    (tmp_path / "valuables.txt").write_text("a file name completion would offer\n")
    assert _complete("fxbench eval runs/x --split ") == ["val", "test"]
    assert _complete("fxbench eval runs/x --split t") == ["test"]
    assert _complete("fxbench train --set model.name=") == [f"model.name={m}" for m in list_models()]
    assert _complete("fxbench train --set model.name=unet") == ["model.name=unet", "model.name=unet_dual"]
    assert _complete("fxbench train --set data.resize=") == ["data.resize=letterbox", "data.resize=stretch"]
    assert _complete("fxbench config show --set augment.enabled=") == ["augment.enabled=true", "augment.enabled=false"]
    assert "train.selection_metric=dice_pos" in _complete("fxbench train --set train.selection_metric=")


# ---------------------------------------------------------------------------------- the walkthrough in docs/workflow.md


def test_first_hour_walkthrough_runs_line_by_line(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Every command of docs/workflow.md's "Your first hour" block, verbatim, through the CLI
    (the demo gets `--n-images 40 --epochs 1`: test_demo runs it at full length)."""
    import shlex

    from typer.testing import CliRunner

    from fxbench.cli.app import app

    doc = (Path(__file__).resolve().parents[1] / "docs" / "workflow.md").read_text()
    block = doc.split("<!-- first-hour:begin -->")[1].split("<!-- first-hour:end -->")[0]
    lines = [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.startswith("fxbench ")]
    assert len(lines) >= 12
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FXBENCH_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    outputs = {}
    for line in lines:
        argv = shlex.split(line)[1:]
        if argv[0] == "demo":
            argv += ["--n-images", "40", "--epochs", "1"]
        res = runner.invoke(app, argv)
        assert res.exit_code == 0, f"{line}\n{res.output}"
        outputs[argv[0] if argv[0] != "eval" else f"eval {argv[argv.index('--split') + 1]}"] = res.output
    assert outputs["demo"].strip().splitlines()[-1].endswith("first-hour/demo/report/report.md")
    assert "(val dice_pos " in outputs["train"]  # train names its selection metric
    assert "next: fxbench eval first-hour/runs/tiny --split val" in outputs["train"]
    assert "next: fxbench tune first-hour/runs/tiny" in outputs["eval val"]
    assert "wrote first-hour/runs/tiny/metrics/test.json; next: fxbench report" in outputs["eval test"]
    assert (tmp_path / "first-hour" / "report" / "report.md").is_file()
    assert list((tmp_path / "first-hour" / "preds" / "overlays").glob("*.png"))
    values = read_json(tmp_path / "first-hour" / "report" / "report.json")["plot_values"]["tiny"]
    assert values["threshold"]["threshold"] == read_json(tmp_path / "first-hour" / "runs" / "tiny" / "decision.json")["threshold"]
    assert values["cases_best"]["background"].startswith("X-ray")
