"""Every recipe in examples/ validates and trains a few steps on CPU at 64 px via --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
from easy_data import make_easy_prepared

from fxbench.config import load_config
from fxbench.train.loop import Trainer

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_prepared(tmp_path_factory.mktemp("easy_examples"), n=24, size=64)


def test_examples_exist() -> None:
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_trains_a_few_steps(path: Path, easy: Path, tmp_path: Path) -> None:
    overrides = [
        f"data.prepared={easy}", "data.image_size=64", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.batch_size=2", "train.eval_batch_size=8", "eval.bootstrap=0", "eval.tta=none", "runtime.device=cpu",
        "runtime.amp=none", "sampler.patch.size=32",
    ]
    cfg = load_config(path, overrides, environ={})
    summary = Trainer(cfg, tmp_path / path.stem).run()
    assert summary["status"] == "finished"
    assert summary["epochs_done"] == 1
    assert (tmp_path / path.stem / "checkpoints" / "last.pt").is_file()
