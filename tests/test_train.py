"""Training loop: learning, exact resume, interruption, warm starts, run folder, lock, DDP."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from easy_data import make_easy_prepared

from fxbench.artifacts.checkpoint import load_checkpoint
from fxbench.artifacts.run import run_lock
from fxbench.config import load_config
from fxbench.errors import CheckpointError, ConfigError, TrainingDivergedError
from fxbench.io import read_json
from fxbench.train.loop import Trainer, lr_factor


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_prepared(tmp_path_factory.mktemp("easy"), n=48, size=64)


def tiny_cfg(prep: Path, **extra: str):
    sets = [
        f"data.prepared={prep}", "data.image_size=64", "model.name=unet_dual", "model.base_channels=8",
        "train.epochs=3", "train.batch_size=8", "train.max_steps_per_epoch=3", "train.eval_batch_size=16",
        "eval.bootstrap=0", "runtime.device=cpu", "runtime.channels_last=false", "optim.lr=3e-3",
        "loss.presence_weight=0.2", "augment.rotate_prob=0.5", "train.ema.enabled=true", "train.ema.decay=0.9",
    ] + [f"{k}={v}" for k, v in extra.items()]
    return load_config(None, sets, environ={})


def test_training_learns(easy: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [
        f"data.prepared={easy}", "data.image_size=64", "model.name=unet", "model.base_channels=8",
        "train.epochs=6", "train.batch_size=8", "sampler.epoch_size=64", "eval.bootstrap=0",
        "runtime.device=cpu", "runtime.channels_last=false", "optim.lr=1e-2", "augment.enabled=false",
        "schedule.name=cosine", "eval.threshold=0.5",
    ], environ={})
    summary = Trainer(cfg, tmp_path / "run").run()
    assert summary["status"] == "finished"
    with open(tmp_path / "run" / "history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6
    first, last = float(rows[0]["train_loss"]), float(rows[-1]["train_loss"])
    assert last < 0.8 * first, (first, last)
    # An untrained network scores ~0 dice_pos; the bars are easy, so a few dozen steps find them.
    best = max(float(r["val_dice_pos"]) for r in rows)
    assert best > 0.5, best
    assert float(rows[0]["val_roc_auc_presence"]) > 0.5


def test_run_folder_contents(easy: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    Trainer(tiny_cfg(easy, **{"train.epochs": "1"}), run).run()
    for name in ("config.resolved.yaml", "env.json", "run.json", "history.csv", "checkpoints/best.pt",
                 "checkpoints/last.pt"):
        assert (run / name).is_file(), name
    info = read_json(run / "run.json")
    assert info["status"] == "finished" and len(info["split_sha256"]) == 64 and len(info["cache_sha256"]) == 64
    assert info["seed"] == 42
    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert ckpt["format"] == "fxbench-ckpt-1" and ckpt["config_sha256"] == tiny_cfg(easy, **{"train.epochs": "1"}).sha256()
    assert not (run / ".lock").exists()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_is_bit_identical(easy: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(easy)
    Trainer(cfg, tmp_path / "full").run()

    interrupted = Trainer(cfg, tmp_path / "cut")
    calls = {"n": 0}

    def stop_mid_epoch_two(p) -> None:  # noqa: ANN001
        if p.event == "step" and p.epoch == 2 and p.step == 1:
            interrupted.stop_requested = "SIGTERM"

    interrupted.on_progress = stop_mid_epoch_two
    assert interrupted.run()["status"] == "interrupted"
    assert read_json(tmp_path / "cut" / "run.json")["status"] == "interrupted"
    calls["n"] += 1
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).run()
    assert resumed["status"] == "finished"
    a, b = _weights(tmp_path / "full" / "checkpoints" / "last.pt"), _weights(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with open(tmp_path / "cut" / "history.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_resume_refuses_changed_config(easy: Path, tmp_path: Path) -> None:
    Trainer(tiny_cfg(easy, **{"train.epochs": "1"}), tmp_path / "r").run()
    with pytest.raises(CheckpointError, match="config changed"):
        Trainer(tiny_cfg(easy, **{"train.epochs": "2", "optim.lr": "1e-2"}), tmp_path / "r", resume=True).run()


def test_warm_start_adds_head_strictly(easy: Path, tmp_path: Path) -> None:
    base = load_config(None, [f"data.prepared={easy}", "data.image_size=64", "model.name=unet", "model.base_channels=8",
                              "train.epochs=1", "train.max_steps_per_epoch=1", "eval.bootstrap=0", "runtime.device=cpu",
                              "runtime.channels_last=false"], environ={})
    Trainer(base, tmp_path / "base").run()
    init = tmp_path / "base" / "checkpoints" / "best.pt"
    dual = tiny_cfg(easy, **{"train.epochs": "1", "train.init_checkpoint": str(init), "train.ema.enabled": "false"})
    trainer = Trainer(dual, tmp_path / "dual")
    trainer.run()
    info = read_json(tmp_path / "dual" / "run.json")
    assert info["init_checkpoint"]["path"].endswith("best.pt") and len(info["init_checkpoint"]["sha256"]) == 64
    wrong = tiny_cfg(easy, **{"train.epochs": "1", "model.base_channels": "16", "train.init_checkpoint": str(init)})
    with pytest.raises(CheckpointError, match="shape"):
        Trainer(wrong, tmp_path / "wrong").run()


def test_nan_loss_stops(easy: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(easy, **{"optim.lr": "1e30", "optim.name": "sgd", "train.epochs": "2", "train.ema.enabled": "false"})
    with pytest.raises(TrainingDivergedError, match="loss became"):
        Trainer(cfg, tmp_path / "nan").run()
    assert read_json(tmp_path / "nan" / "run.json")["status"] == "failed"


def test_lock_refuses_second_writer(tmp_path: Path) -> None:
    run = tmp_path / "locked"
    run.mkdir()
    with run_lock(run):
        child = subprocess.run([sys.executable, "-c", (
            "from pathlib import Path; from fxbench.artifacts.run import run_lock\n"
            f"with run_lock(Path({str(run)!r})): pass")], capture_output=True, text=True)
        assert child.returncode != 0 and "RunLockedError" in child.stderr
    (run / ".lock").write_text("999999")  # stale lock of a dead process is taken over
    with run_lock(run):
        pass


def test_unknown_selection_metric_is_config_error() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dice_pos'"):
        load_config(None, ["train.selection_metric=dice_poss"], environ={})


def test_schedules() -> None:
    cfg = load_config(None, ["schedule.name=cosine", "schedule.warmup_epochs=1", "optim.lr=1e-3", "schedule.min_lr=1e-5"],
                      environ={})
    assert lr_factor(0, 100, 10, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, cfg) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10, cfg) == pytest.approx(0.01)
    one = load_config(None, ["schedule.name=onecycle", "optim.lr=1e-3", "schedule.pct_start=0.2"], environ={})
    assert lr_factor(20, 100, 10, one) == pytest.approx(1.0)
    assert lr_factor(0, 100, 10, one) == pytest.approx(0.1)
    poly = load_config(None, ["schedule.name=poly", "optim.lr=1e-3", "schedule.min_lr=0"], environ={})
    assert lr_factor(50, 100, 10, poly) == pytest.approx(0.5 ** 0.9)


def test_same_seed_same_metrics(easy: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(easy, **{"train.epochs": "1"})
    a = Trainer(cfg, tmp_path / "a").run()
    b = Trainer(cfg, tmp_path / "b").run()
    assert a["best_val"] == b["best_val"]


@pytest.mark.skipif(shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_two_processes_gloo(easy: Path, tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--nproc-per-node", "2", "--master-port", "29533", "-m", "fxbench", "train",
           "--run-dir", str(run), "--quiet",
           "--set", f"data.prepared={easy}", "--set", "data.image_size=64", "--set", "model.name=unet",
           "--set", "model.base_channels=8", "--set", "train.epochs=1", "--set", "train.batch_size=4",
           "--set", "eval.bootstrap=0", "--set", "runtime.device=cpu", "--set", "runtime.channels_last=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = read_json(run / "run.json")
    assert info["world_size"] == 2 and info["status"] == "finished"
    # 28 train images -> 28 draws per epoch, sharded 14 per rank, batch 4 -> 3 steps.
    assert info["steps_per_epoch"] == 3
    assert (run / "checkpoints" / "best.pt").is_file()


def test_hard_negative_mining_state_saved(easy: Path, tmp_path: Path) -> None:
    cfg = tiny_cfg(easy, **{"train.epochs": "2", "sampler.hard_negative_mining": "true",
                            "sampler.mining_fraction": "0.5"})
    Trainer(cfg, tmp_path / "m").run()
    state = load_checkpoint(tmp_path / "m" / "checkpoints" / "last.pt")["sampler"]
    # The top quarter of the train negatives (by max probability) are kept as hard negatives.
    assert 1 <= len(state["hard_negatives"]) <= 28 // 4 + 1
    assert state["hard_fraction"] == 0.5
