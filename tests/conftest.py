"""Shared test set-up: no network, a private data home, and a tiny prepared synthetic archive.

Fixtures other test modules rely on (keep the names):
- ``synth_archive``: a folder holding a small synthetic ``FracAtlas/`` (tiny images).
- ``prepared``: that archive prepared with caches 64 and 128 px, grouped split.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Runs before collection: nothing a test does may reach the network or the user's home."""
    global _HOME
    _HOME = tempfile.mkdtemp(prefix="fxbench-test-home-")
    os.environ["FXBENCH_HOME"] = _HOME
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["FXBENCH_OFFLINE"] = "1"  # fxbench download refuses the network (tests patch the opener)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _HOME:
        shutil.rmtree(_HOME, ignore_errors=True)


#: Size of the shared synthetic archive: tiny images (93x114 and 576x720 px) so the whole
#: prepare takes about a second.
SYNTH_KW = {"n_images": 64, "seed": 0, "scale": 0.25, "large_fraction": 0.08, "positive_fraction": 0.25}


@pytest.fixture(scope="session")
def synth_plan_and_archive(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from fxbench.data.synthetic import make_synthetic

    root = tmp_path_factory.mktemp("synth_archive")
    plan = make_synthetic(root, **SYNTH_KW)
    return plan, root


@pytest.fixture(scope="session")
def synth_archive(synth_plan_and_archive) -> Path:  # type: ignore[no-untyped-def]
    """A folder holding ``FracAtlas/`` (synthetic, 64 images)."""
    return synth_plan_and_archive[1]


@pytest.fixture(scope="session")
def synth_plan(synth_plan_and_archive):  # type: ignore[no-untyped-def]
    """The ground truth of ``synth_archive`` (which image is rotated, truncated, ...)."""
    return synth_plan_and_archive[0]


@pytest.fixture(scope="session")
def prepared(synth_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synth_archive`` prepared into a folder: grouped split, caches 64 and 128 (raw)."""
    from fxbench.data.prepare import prepare

    out = tmp_path_factory.mktemp("prepared")
    prepare(synth_archive, out, split_mode="grouped", seed=42, cache_sizes=(64, 128), workers=2)
    return out
