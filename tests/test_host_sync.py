"""The training step never waits for the device (issue 12).

On CUDA every readback (``.item()``, ``.cpu()``, ``.tolist()``, ``bool(t)``, ``float(t)``...) and
every small host->device tensor (``torch.tensor(..., device=)``) blocks the host until the GPU
catches up. On CPU nothing is asynchronous, so the test counts the *calls* instead: it patches
those entry points and runs real training steps through ``Trainer``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from easy_data import make_easy_prepared

from fxbench.config import load_config
from fxbench.train import loop
from fxbench.train.loop import Trainer

#: Tensor methods that copy a device value to the host (a sync on CUDA).
READBACKS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")
#: torch functions that build a tensor from host data (a host->device copy when device=cuda).
FROM_HOST = ("tensor", "as_tensor", "from_numpy")


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_prepared(tmp_path_factory.mktemp("easy_sync"), n=32, size=64)


def _cfg(prep: Path, *extra: str):
    return load_config(None, [
        f"data.prepared={prep}", "data.image_size=64", "model.name=unet_dual", "model.base_channels=4",
        "train.epochs=1", "train.batch_size=4", "train.max_steps_per_epoch=3", "train.log_every_steps=50",
        "eval.bootstrap=0", "runtime.device=cpu", "runtime.channels_last=true", "loss.presence_weight=0.3",
        "loss.pos_weight=2.0", "loss.focal_weight=0.2", "loss.tversky_weight=0.2", "train.ema.enabled=true",
        "optim.grad_clip_norm=1.0", "augment.rotate_prob=0.5", "augment.affine_prob=0.5", "augment.cutout_prob=0.5",
        "augment.noise_prob=0.5", "augment.blur_prob=0.5", "augment.sharpen_prob=0.5", "augment.autocontrast_prob=0.5",
        "augment.local_contrast_prob=0.5", *extra,
    ], environ={})


def _count_syncs_in_steps(monkeypatch: pytest.MonkeyPatch, cfg, run_dir: Path) -> tuple[Counter, int]:  # noqa: ANN001
    calls: Counter = Counter()
    inside = {"on": False, "steps": 0}

    def counting(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if inside["on"]:
                calls[name] += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in READBACKS:
        counting(torch.Tensor, name)
    for name in FROM_HOST:
        counting(torch, name)
    counting(torch.cuda, "synchronize")
    def watched(owner: type, name: str, count_steps: bool) -> None:
        original = getattr(owner, name)

        def wrapper(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
            inside["on"] = True
            try:
                return original(self, *args, **kwargs)
            finally:
                inside["on"] = False
                inside["steps"] += count_steps

        monkeypatch.setattr(owner, name, wrapper)

    watched(loop.Trainer, "_step", True)
    watched(loop.LossMeter, "add", False)
    summary = Trainer(cfg, run_dir).run()
    assert summary["status"] == "finished"
    return calls, inside["steps"]


def test_training_step_makes_no_host_sync(easy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls, steps = _count_syncs_in_steps(monkeypatch, _cfg(easy), tmp_path / "run")
    assert steps == 3
    assert dict(calls) == {}, f"host syncs inside the training step: {dict(calls)}"


def test_patch_sampling_step_makes_no_host_sync(easy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(easy, "sampler.patch.enabled=true", "sampler.patch.size=32", "sampler.patch.hard_negative_prob=0.5")
    calls, steps = _count_syncs_in_steps(monkeypatch, cfg, tmp_path / "run")
    assert steps == 3
    assert dict(calls) == {}, f"host syncs inside the training step: {dict(calls)}"


def test_the_counter_sees_a_sync(easy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The patching works: a step that reads its loss back is counted."""
    step = loop.Trainer._step

    def syncing_step(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        loss = step(self, *args, **kwargs)
        float(loss)
        return loss

    monkeypatch.setattr(loop.Trainer, "_step", syncing_step)
    calls, _ = _count_syncs_in_steps(monkeypatch, _cfg(easy), tmp_path / "run")
    assert calls["__float__"] == 3


def test_nonfinite_loss_is_caught_at_the_readback(easy: Path, tmp_path: Path) -> None:
    from fxbench.errors import TrainingDivergedError

    meter = loop.LossMeter(torch.device("cpu"))
    meter.add(torch.tensor(1.0), 0)
    meter.add(torch.tensor(float("nan")), 1)
    meter.add(torch.tensor(float("inf")), 2)
    with pytest.raises(TrainingDivergedError, match="loss became nan at epoch 3, step 2"):
        meter.read(3)
    ok = loop.LossMeter(torch.device("cpu"))
    ok.add(torch.tensor(1.0), 0)
    ok.add(torch.tensor(3.0), 1)
    ok.read(1)
    assert ok.mean == 2.0 and ok.last == 3.0
