"""The SLURM launcher without a cluster: nothing of submitit is imported unless used, the sbatch
parameters come from the launcher section, a pre-empted job requeues itself, and `show`/`runs`
report a submitted sweep's state from the queue (a fake squeue) and the run folders.
The real-cluster check is benchmarks/slurm_check.sh (docs/workflow.md)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fxbench.cli.app import app
from fxbench.config import load_config
from fxbench.launch.jobs import JobResult, sweep_jobs
from fxbench.launch.local import write_sweep
from fxbench.launch.state import sweep_states


def test_no_submitit_import_unless_slurm_is_used() -> None:
    code = ("import sys, fxbench.launch.slurm, fxbench.launch.local, fxbench.launch.state, fxbench.cli.train_cmd; "
            "print([m for m in sys.modules if m.startswith('submitit')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_missing_submitit_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    result = CliRunner().invoke(app, ["train", "--seeds", "1,2", "--launcher", "slurm", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "needs submitit" in result.output and "fxbench[slurm]" in result.output


def test_executor_parameters_from_the_launcher_section() -> None:
    from fxbench.launch.slurm import executor_parameters

    cfg = load_config(None, ["launcher.partition=gpu", "launcher.time_min=90", "launcher.gpus=1", "launcher.cpus=8",
                             "launcher.mem_gb=32", "launcher.jobs=2", "launcher.signal_delay_s=300"], environ={})
    params = executor_parameters(cfg.launcher, 6, "r-sweep")
    assert params["partition"] == "gpu" and params["time"] == 90 and params["gpus_per_node"] == 1
    assert params["cpus_per_task"] == 8 and params["mem"] == "32GB" and params["array_parallelism"] == 2
    assert params["signal_delay_s"] == 300 and params["additional_parameters"] == {"requeue": True}
    assert "SUBMITIT_PREEMPT_SIGNAL=USR1" in params["setup"][0]
    default = executor_parameters(load_config(None, [], environ={}).launcher, 6, "x")
    assert "partition" not in default and "gpus_per_node" not in default and default["array_parallelism"] == 6


def test_launcher_section_is_not_hashed() -> None:
    a = load_config(None, [], environ={})
    b = load_config(None, ["launcher.name=slurm", "launcher.partition=p"], environ={})
    assert a.sha256() == b.sha256()
    assert a.sha256() != load_config(None, ["train.seed=1"], environ={}).sha256()


def test_interrupted_slurm_job_requeues_itself(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fxbench.launch import slurm

    job = sweep_jobs(load_config(None, [], environ={}), tmp_path, "r", seeds=[1]).jobs[0]
    seen: dict[str, object] = {}

    def fake_run_job(j, skip_existing=False, on_progress=None):  # type: ignore[no-untyped-def]
        seen["skip"] = skip_existing
        return JobResult(j.key, j.run_dir, j.seed, j.fold, status="interrupted")

    monkeypatch.setattr(slurm, "run_job", fake_run_job)
    monkeypatch.setattr(slurm, "_requeue_self", lambda: seen.setdefault("requeued", True))
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with pytest.raises(SystemExit):
        slurm.SlurmJob(job.to_dict(), skip_existing=False, threads=None)()
    assert seen == {"skip": True, "requeued": True}  # a requeued job resumes, and requeues again

    def failed(j, skip_existing=False, on_progress=None):  # type: ignore[no-untyped-def]
        return JobResult(j.key, j.run_dir, j.seed, j.fold, status="failed", reason="disk full")

    monkeypatch.setattr(slurm, "run_job", failed)
    with pytest.raises(RuntimeError, match="seed_1 failed: disk full"):
        slurm.SlurmJob(job.to_dict(), skip_existing=False, threads=None)()


def _fake_squeue(bin_dir: Path, lines: str) -> None:
    bin_dir.mkdir()
    script = bin_dir / "squeue"
    script.write_text(f"#!/bin/sh\nprintf '{lines}'\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_show_and_runs_report_a_submitted_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, [], environ={})
    sweep = sweep_jobs(cfg, tmp_path / "runs", "r", seeds=[1, 2, 3, 4])
    folder = sweep.sweep_dir / "slurm"
    folder.mkdir(parents=True)
    ids = {"seed_1": "7_0", "seed_2": "7_1", "seed_3": "7_2", "seed_4": "7_3"}
    write_sweep(sweep, [], {"name": "slurm", "folder": str(folder), "job_ids": ids})
    done = Path(sweep.jobs[2].run_dir)
    done.mkdir()
    (done / "run.json").write_text(json.dumps({"status": "finished", "best_epoch": 2, "best_score": 0.5}))
    (folder / "7_3_0_log.err").write_text("Traceback ...\nRuntimeError: seed_4 failed: disk full\n")
    _fake_squeue(tmp_path / "bin", "7_0|PENDING\\n7_1|RUNNING\\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")

    _record, states = sweep_states(sweep.sweep_dir)
    assert [s.state for s in states] == ["pending", "running", "finished", "failed"]
    assert states[3].log_tail[-1] == "RuntimeError: seed_4 failed: disk full"

    runner = CliRunner()
    shown = runner.invoke(app, ["show", str(sweep.sweep_dir)])
    assert shown.exit_code == 0, shown.output
    assert "1 pending, 1 running, 1 finished, 1 failed" in shown.output
    assert "failed: seed_4: RuntimeError: seed_4 failed: disk full" in shown.output
    as_json = json.loads(runner.invoke(app, ["show", str(sweep.sweep_dir), "--json"]).stdout)
    assert [j["state"] for j in as_json["jobs"]] == ["pending", "running", "finished", "failed"]
    listed = runner.invoke(app, ["runs", str(tmp_path / "runs")])
    assert listed.exit_code == 0, listed.output
    assert f"sweep {sweep.sweep_dir} (slurm): 1 pending, 1 running, 1 finished, 1 failed" in listed.output
