"""CI runs the README's test command verbatim, then ruff and mypy (configured in pyproject.toml)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in text.splitlines() if "pip install" in ln and "pytest" in ln]
    assert len(lines) == 1, lines
    return lines[0]


def test_ci_runs_the_readme_command_then_ruff_and_mypy() -> None:
    steps = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert "set -euo pipefail" in steps  # a failing step fails the run
    command = _readme_test_command()
    assert command in steps
    after = steps[steps.index(command) + 1:]
    assert after == ["ruff check src tests", "mypy"]


def test_the_test_extra_brings_the_tools_and_mypy_uses_the_pydantic_plugin() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = {re.split(r"[<>=!~ ]", req, maxsplit=1)[0].lower() for req in project["project"]["optional-dependencies"]["test"]}
    assert {"pytest", "ruff", "mypy", "types-pyyaml"} <= extra
    mypy = project["tool"]["mypy"]
    assert "pydantic.mypy" in mypy["plugins"] and mypy["files"] == ["src/fxbench"]
