"""docs/config.md is generated from the schema; this test fails when it is stale."""

from __future__ import annotations

from pathlib import Path

from fxbench.config import all_keys
from fxbench.docs_gen import SECTION_INTROS, SECTION_RULES, VALIDATOR_RULES, render_config_reference

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def test_config_reference_is_up_to_date() -> None:
    expected = render_config_reference()
    current = DOC.read_text(encoding="utf-8") if DOC.is_file() else ""
    assert current == expected, (
        "docs/config.md is stale (the schema in src/fxbench/config.py changed): "
        "run `python scripts/gen_config_docs.py` and commit the result"
    )


def test_reference_lists_every_key_once_with_its_default() -> None:
    text = render_config_reference()
    for key in all_keys():
        assert text.count(f"| `{key}` |") == 1, key
    assert "| `optim.lr` | float | `0.0003` | > 0.0 |" in text
    assert "| `data.image_size` | int | `256` | >= 32; <= 2048; multiple of 32 |" in text
    assert "| `eval.tta` | text | `none` | one of `none`, `h`, `v`, `hv`, `d4` |" in text
    assert "| `model.weights` | path, optional | `null` |" in text


def test_hand_written_notes_point_at_real_keys() -> None:
    keys = set(all_keys())
    sections = {k.rsplit(".", 1)[0] for k in keys if "." in k}
    sections |= {s.rsplit(".", 1)[0] for s in sections if "." in s}
    assert set(VALIDATOR_RULES) <= keys
    assert set(SECTION_RULES) | set(SECTION_INTROS) <= sections


def test_rendering_depends_only_on_the_schema(tmp_path: Path) -> None:
    """Another process, another hash seed, cwd, home and data folder: the same page."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONHASHSEED": "12345", "HOME": str(tmp_path), "FXBENCH_HOME": str(tmp_path / "fx"),
           "FXBENCH_RUNS": str(tmp_path / "runs"), "TZ": "Pacific/Kiritimati", "COLUMNS": "40"}
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from fxbench.docs_gen import render_config_reference as r; sys.stdout.write(r())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True, encoding="utf-8",
    )
    assert proc.stdout == render_config_reference()
