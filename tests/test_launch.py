"""Sweeps as jobs (fxbench.launch): parallel = sequential byte for byte, a failed job does not
stop the others, --skip-existing keeps finished runs, Ctrl-C stops every job resumably."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from easy_data import make_easy_prepared
from typer.testing import CliRunner

from fxbench.artifacts.checkpoint import load_checkpoint
from fxbench.cli.app import app
from fxbench.config import load_config
from fxbench.io import read_json
from fxbench.launch.jobs import run_job, run_state, sweep_jobs
from fxbench.launch.local import Slot, plan_slots, sweep_exit_code
from fxbench.train.loop import Trainer

SEEDS = "1,2"


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_prepared(tmp_path_factory.mktemp("easy"), n=32, size=64)


def _sets(prep: Path, epochs: int = 2, steps: int = 2) -> list[str]:
    # runtime.num_threads=1: the sequential and the parallel runs use one thread each, whatever
    # the machine (results on CPU may depend on the thread count).
    sets = [f"data.prepared={prep}", "data.image_size=64", "model.name=unet_dual", "model.base_channels=8",
            f"train.epochs={epochs}", "train.batch_size=8", f"train.max_steps_per_epoch={steps}",
            "train.eval_batch_size=16", "eval.bootstrap=0", "runtime.device=cpu", "runtime.channels_last=false",
            "runtime.num_threads=1", "loss.presence_weight=0.2"]
    return [a for s in sets for a in ("--set", s)]


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in list(os.environ):
        if name.startswith("FXBENCH_") and "__" in name:
            monkeypatch.delenv(name)
    return CliRunner()


@pytest.fixture(scope="module")
def sequential(easy: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: a 2-seed sweep run one after another in this process (as before #17)."""
    root = tmp_path_factory.mktemp("seq")
    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["train", *_sets(easy), "--seeds", SEEDS, "--name", "t",
                                          "--run-dir", str(root), "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return root / "t-sweep"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


CKPTS = ("checkpoints/best.pt", "checkpoints/last.pt", "config.resolved.yaml")


def test_parallel_sweep_is_byte_identical_to_sequential(easy: Path, sequential: Path, tmp_path: Path,
                                                         runner: CliRunner) -> None:
    result = runner.invoke(app, ["train", *_sets(easy), "--seeds", SEEDS, "--name", "t", "--run-dir", str(tmp_path),
                                 "--jobs", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    sweep = tmp_path / "t-sweep"
    for seed in SEEDS.split(","):
        for rel in CKPTS:
            assert _digest(sweep / f"seed_{seed}" / rel) == _digest(sequential / f"seed_{seed}" / rel), (seed, rel)
        assert read_json(sweep / f"seed_{seed}" / "run.json")["status"] == "finished"
    # the two seeds really differ (the seed reached each job)
    assert _digest(sweep / "seed_1" / CKPTS[0]) != _digest(sweep / "seed_2" / CKPTS[0])
    record = read_json(sweep / "sweep.json")
    assert record["launcher"]["jobs"] == 2 and [r["status"] for r in record["results"]] == ["finished"] * 2
    # plain lines when piped: one per job event, naming the job
    assert "seed_1: finished" in result.output and "seed_2: finished" in result.output
    assert (sweep / "logs" / "seed_1.log").is_file()


def test_failing_job_leaves_the_other_finished(easy: Path, tmp_path: Path, runner: CliRunner) -> None:
    sweep = tmp_path / "t-sweep"
    sweep.mkdir()
    # An unwritable run folder (root ignores chmod): a file where seed_2's folder must go.
    (sweep / "seed_2").write_text("not a folder\n")
    result = runner.invoke(app, ["train", *_sets(easy, epochs=1), "--seeds", SEEDS, "--name", "t",
                                 "--run-dir", str(tmp_path), "--jobs", "2", "--quiet"])
    assert result.exit_code == 1, result.output
    assert read_json(sweep / "seed_1" / "run.json")["status"] == "finished"
    assert (sweep / "seed_1" / "checkpoints" / "best.pt").is_file()
    failed = [ln for ln in result.output.splitlines() if ln.startswith("failed: ")]
    assert len(failed) == 1 and failed[0].startswith("failed: seed_2: ") and "seed_2" in failed[0][16:], result.output
    assert "File exists" in failed[0] or "Not a directory" in failed[0], failed[0]
    assert "--skip-existing" in result.output
    statuses = {r["key"]: r["status"] for r in read_json(sweep / "sweep.json")["results"]}
    assert statuses == {"seed_1": "finished", "seed_2": "failed"}


def test_sequential_sweep_goes_on_after_a_failure(easy: Path, tmp_path: Path, runner: CliRunner) -> None:
    sweep = tmp_path / "t-sweep"
    sweep.mkdir()
    (sweep / "seed_1").write_text("")
    result = runner.invoke(app, ["train", *_sets(easy, epochs=1, steps=1), "--seeds", SEEDS, "--name", "t",
                                 "--run-dir", str(tmp_path), "--quiet"])
    assert result.exit_code == 1, result.output
    assert read_json(sweep / "seed_2" / "run.json")["status"] == "finished"
    assert "failed: seed_1: " in result.output


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (_digest(p), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_skip_existing_keeps_finished_and_resumes_interrupted(easy: Path, sequential: Path, tmp_path: Path,
                                                             runner: CliRunner) -> None:
    sweep = tmp_path / "t-sweep"
    shutil.copytree(sequential, sweep, copy_function=shutil.copy2)
    before = _tree(sweep / "seed_1")
    # seed_2: interrupted mid-epoch 2, with the very config its job carries
    shutil.rmtree(sweep / "seed_2")
    cfg = load_config(None, [a for a in _sets(easy) if a != "--set"], environ={})
    job = sweep_jobs(cfg, tmp_path, "t", seeds=[1, 2]).jobs[1]
    cut = Trainer(job.cfg(), Path(job.run_dir))

    def stop(p):  # type: ignore[no-untyped-def]
        if p.epoch == 2 and p.step == 1:
            cut.stop_requested = "SIGTERM"

    cut.on_progress = stop
    assert cut.run()["status"] == "interrupted" and run_state(sweep / "seed_2") == "partial"
    threads = torch.get_num_threads()
    try:
        result = runner.invoke(app, ["train", *_sets(easy), "--seeds", SEEDS, "--name", "t", "--run-dir", str(tmp_path),
                                     "--skip-existing", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    assert _tree(sweep / "seed_1") == before  # every file of the finished seed: same bytes, untouched
    statuses = {r["key"]: r["status"] for r in read_json(sweep / "sweep.json")["results"]}
    assert statuses == {"seed_1": "skipped", "seed_2": "finished"}
    for rel in CKPTS[:2]:
        resumed, ref = load_checkpoint(sweep / "seed_2" / rel)["model"], load_checkpoint(sequential / "seed_2" / rel)["model"]
        assert all(torch.equal(resumed[k], ref[k]) for k in ref), rel


def test_without_skip_existing_a_finished_run_is_refused(easy: Path, sequential: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [a for a in _sets(easy) if a != "--set"], environ={})
    job = sweep_jobs(cfg, sequential.parent, "t", seeds=[1]).jobs[0]
    result = run_job(job)
    assert result.status == "failed" and "already holds a run" in (result.reason or "")
    assert run_job(job, skip_existing=True).status == "skipped"


def test_ctrl_c_stops_all_jobs_resumably(easy: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not (k.startswith("FXBENCH_") and "__" in k)}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "fxbench", "train", *_sets(easy, epochs=200, steps=2), "--seeds", SEEDS, "--name", "t",
           "--run-dir", str(tmp_path), "--jobs", "2", "--quiet"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sweep = tmp_path / "t-sweep"
    try:
        deadline = time.monotonic() + 240
        while not all((sweep / f"seed_{s}" / "history.csv").is_file() for s in (1, 2)):
            assert proc.poll() is None, proc.communicate()[0]
            if time.monotonic() > deadline:  # a hang guard, not a speed check
                pytest.fail("the sweep started no job within 240 s")
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    for s in (1, 2):
        assert read_json(sweep / f"seed_{s}" / "run.json")["status"] == "interrupted", out
        assert run_state(sweep / f"seed_{s}") == "partial"
    assert "--skip-existing" in out


def test_plan_slots_gpu_and_cpu() -> None:
    cfg = load_config(None, ["runtime.device=auto"], environ={})
    slots = plan_slots(cfg, 4, gpus=["0", "3"], cores=16)
    assert [s.cuda for s in slots] == ["0", "3"] and all(s.threads == 8 for s in slots)
    assert plan_slots(cfg, 2, gpus=[], cores=16) == [Slot("cpu x8", threads=8)] * 2
    assert plan_slots(cfg, 4, gpus=[], cores=2)[0].threads == 1
    pinned = load_config(None, ["runtime.num_threads=3"], environ={})
    assert plan_slots(pinned, 2, gpus=[], cores=16)[0].threads == 3


def test_job_layout_seeds_folds_and_fold_hook(tmp_path: Path) -> None:
    cfg = load_config(None, ["launcher.jobs=4"], environ={})
    seeds = sweep_jobs(cfg, tmp_path, "r", seeds=[3, 4])
    assert [j.key for j in seeds.jobs] == ["seed_3", "seed_4"] and seeds.sweep_dir == tmp_path / "r-sweep"
    assert [j.cfg().train.seed for j in seeds.jobs] == [3, 4]
    assert all(j.cfg().launcher.jobs is None for j in seeds.jobs)  # the run's config is the sequential one
    assert seeds.jobs[0].cfg().sha256() == cfg.model_copy(
        update={"train": cfg.train.model_copy(update={"seed": 3})}).sha256()
    both = sweep_jobs(cfg, tmp_path, "r", seeds=[3], folds=[0, 1])
    assert [j.key for j in both.jobs] == ["seed_3/fold_0", "seed_3/fold_1"] and both.sweep_dir.name == "r-cv"
    assert [j.key for j in sweep_jobs(cfg, tmp_path, "r", folds=[2]).jobs] == ["fold_2"]
    assert sweep_exit_code([]) == 0


def test_sweep_flags_need_seeds(runner: CliRunner) -> None:
    result = runner.invoke(app, ["train", "--jobs", "2"])
    assert result.exit_code == 2 and "--seeds" in result.output
