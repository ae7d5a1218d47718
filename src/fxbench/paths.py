"""Where fxbench keeps data and runs.

Data home: ``$FXBENCH_HOME`` if set, else the platformdirs user data dir for "fxbench".
Layout under the home: ``archives/`` (downloaded zips), ``raw/`` (extracted archives),
``prepared/<name>/`` (outputs of ``prepare``), ``runs/`` is NOT here: runs go to ``./runs``
(the current directory) unless ``--run-dir`` says otherwise, so results live with the project.
``fxbench demo`` writes to :func:`demo_dir` (a cache folder) unless ``--out`` says otherwise.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

HOME_ENV = "FXBENCH_HOME"


def data_home() -> Path:
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("fxbench", appauthor=False))


def archives_dir() -> Path:
    return data_home() / "archives"


def raw_dir() -> Path:
    return data_home() / "raw"


def prepared_dir(name: str = "fracatlas") -> Path:
    return data_home() / "prepared" / name


def demo_dir() -> Path:
    """Default folder of ``fxbench demo``: ``$FXBENCH_HOME/demo`` if set, else the platformdirs
    user cache dir (e.g. ``~/.cache/fxbench/demo``): never the current folder, so a demo run
    inside a git clone leaves no untracked files."""
    env = os.environ.get(HOME_ENV)
    if env:
        return Path(env).expanduser() / "demo"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("fxbench", appauthor=False)) / "demo"


def default_runs_root() -> Path:
    return Path(os.environ.get("FXBENCH_RUNS", "runs"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "run"


def new_run_dir(root: str | os.PathLike[str], name: str) -> Path:
    """Create a fresh ``root/<name>-<YYYYmmdd-HHMMSS>[-N]`` folder atomically (mkdir, no races)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{_slug(name)}-{stamp}"
    for i in range(1000):
        cand = root / (base if i == 0 else f"{base}-{i + 1}")
        try:
            cand.mkdir()
            return cand
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run folder under {root}")
