"""Tab completion of RUN folders for the verbs that take one (eval, predict, tune, ensemble, blend).

Runs Typer's completion protocol in-process (the same environment variables the installed
script's shell function sets: ``_FXBENCH_COMPLETE=complete_bash``, ``COMP_WORDS``, ``COMP_CWORD``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fxbench.cli.app import app
from fxbench.runs import complete_run_dir, complete_run_path


def _run(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.resolved.yaml").write_text("name: x\n")
    return folder


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with ./runs/{exp-a, exp-b, sweep/seed_1} and a non-run ./runs/notes."""
    for name in list(os.environ):
        if name.startswith("FXBENCH_"):
            monkeypatch.delenv(name)
    _run(tmp_path / "runs" / "exp-a")
    _run(tmp_path / "runs" / "exp-b")
    _run(tmp_path / "runs" / "sweep" / "seed_1")
    (tmp_path / "runs" / "notes").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def complete(line: str) -> list[str]:
    """What bash completion offers for the last word of ``line`` (a trailing space = a new word)."""
    words = line.split(" ")
    result = CliRunner().invoke(app, [], prog_name="fxbench", env={
        "_FXBENCH_COMPLETE": "complete_bash", "COMP_WORDS": line, "COMP_CWORD": str(len(words) - 1),
    })
    assert result.exit_code == 0, result.output
    return result.stdout.split()


@pytest.mark.parametrize("verb", ["eval", "predict", "tune", "ensemble", "blend"])
def test_run_verbs_complete_run_folders(project: Path, verb: str) -> None:
    assert complete(f"fxbench {verb} runs/") == ["runs/exp-a", "runs/exp-b", "runs/sweep/seed_1"]
    assert complete(f"fxbench {verb} runs/exp-b") == ["runs/exp-b"]
    assert complete(f"fxbench {verb} ./runs/sw") == ["./runs/sweep/seed_1"]  # the typed prefix is kept


def test_second_run_argument_completes_too(project: Path) -> None:
    assert complete("fxbench ensemble runs/exp-a runs/e") == ["runs/exp-a", "runs/exp-b"]
    assert complete("fxbench blend runs/exp-a runs/s") == ["runs/sweep/seed_1"]


def test_path_verbs_offer_no_bare_names(project: Path) -> None:
    # `show` resolves a bare name under ./runs; eval/tune/predict open the path as given, so a
    # bare name would not work there and is not offered.
    assert complete("fxbench show exp") == ["exp-a", "exp-b"]
    assert complete("fxbench eval exp") == []
    assert complete_run_dir("exp") == ["exp-a", "exp-b"]
    assert complete_run_path("exp") == []


def test_runs_root_from_environment(project: Path, tmp_path_factory: pytest.TempPathFactory,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path_factory.mktemp("elsewhere")
    _run(other / "big-run")
    monkeypatch.setenv("FXBENCH_RUNS", str(other))
    assert complete("fxbench tune ") == [str(other / "big-run")]
    assert complete("fxbench predict runs/exp") == ["runs/exp-a", "runs/exp-b"]  # a typed folder still works
