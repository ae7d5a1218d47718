"""CUDA paths: AMP bf16/fp16, channels_last, torch.compile, CPU/CUDA agreement.

Skipped without a CUDA device; `benchmarks/gpu_check.sh` runs them (`pytest -m cuda`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from easy_data import make_easy_prepared

from fxbench.config import load_config
from fxbench.train.loop import Trainer

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_prepared(tmp_path_factory.mktemp("easy_cuda"), n=64, size=64)


def _cfg(prep: Path, *extra: str):
    return load_config(None, [
        f"data.prepared={prep}", "data.image_size=64", "model.name=unet_dual", "model.base_channels=16",
        "train.epochs=4", "train.batch_size=16", "sampler.epoch_size=128", "eval.bootstrap=0",
        "runtime.device=cuda", "optim.lr=1e-2", "schedule.name=cosine", "augment.enabled=false", *extra,
    ], environ={})


@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
@pytest.mark.parametrize("channels_last", ["true", "false"])
def test_amp_paths_train_and_learn(easy: Path, tmp_path: Path, amp: str, channels_last: str) -> None:
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this card")
    run = tmp_path / f"{amp}-{channels_last}"
    summary = Trainer(_cfg(easy, f"runtime.amp={amp}", f"runtime.channels_last={channels_last}"), run).run()
    assert summary["status"] == "finished"
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert max(float(r["val_dice_pos"]) for r in rows) > 0.3


def test_compile_path(easy: Path, tmp_path: Path) -> None:
    """A compiled model learns like the eager one, and its checkpoint is an eager state dict
    (no ``_orig_mod.`` prefix) that loads strictly into a fresh network."""
    from fxbench.artifacts.checkpoint import load_checkpoint
    from fxbench.predict.infer import load_run_model

    run = tmp_path / "compiled"
    summary = Trainer(_cfg(easy, "runtime.compile=true"), run).run()
    assert summary["status"] == "finished"
    with open(run / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert max(float(r["val_dice_pos"]) for r in rows) > 0.3
    keys = list(load_checkpoint(run / "checkpoints" / "best.pt")["model"])
    assert keys and not any("_orig_mod." in k for k in keys), keys[:3]
    load_run_model(run, "best", "cpu")  # strict load: raises on a missing or unexpected key


def test_cuda_and_cpu_predictions_agree(easy: Path, tmp_path: Path) -> None:
    from fxbench.models.inference import predict_tensors
    from fxbench.predict.infer import load_run_model

    run = tmp_path / "agree"
    Trainer(_cfg(easy, "runtime.amp=none", "train.epochs=2"), run).run()
    from fxbench.data.dataset import load_prepared

    val = load_prepared(easy, 64, splits=("val",)).splits["val"]
    cpu_model, _, _ = load_run_model(run, "best", "cpu")
    gpu_model, _, _ = load_run_model(run, "best", "cuda")
    p_cpu, s_cpu = predict_tensors(cpu_model, val.images, val.boxes, tta="hv", device="cpu")
    p_gpu, s_gpu = predict_tensors(gpu_model, val.images, val.boxes, tta="hv", device="cuda")
    assert np.abs(p_cpu - p_gpu).max() < 2e-3
    for key in s_cpu:
        assert np.abs(s_cpu[key] - s_gpu[key]).max() < 2e-3
    p_bf, _ = predict_tensors(gpu_model, val.images, val.boxes, tta="hv", device="cuda", amp_dtype=torch.bfloat16)
    assert np.abs(p_cpu - p_bf).max() < 5e-2
