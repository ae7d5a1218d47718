"""The SLURM launcher: a sweep as one job array, submitted through submitit.

Only this module imports submitit (the optional extra ``pip install 'fxbench[slurm]'``), and only
``fxbench train --launcher slurm`` (or ``launcher.name: slurm``) imports this module.

Pre-emption and time limits: sbatch gets ``--signal=USR1@<launcher.signal_delay_s>``. While a job
trains, the trainer catches SIGUSR1 (and SIGTERM, what a pre-empting SLURM sends), writes
``last.pt`` at the next step and returns ``interrupted``; the job then requeues itself
(``scontrol requeue``). A requeued job runs the same submission again, which resumes its run
folder from ``last.pt`` (a finished one is left as it is). Outside training, submitit's own
handler takes the signal and requeues through :meth:`SlurmJob.checkpoint`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from fxbench.config import LauncherConfig
from fxbench.errors import FxbenchError, UsageError
from fxbench.launch.jobs import Job, Sweep, run_job
from fxbench.launch.local import write_sweep

#: The signal SLURM sends ahead of a time limit (submitit reads this variable, in the job too).
PREEMPT_SIGNAL = "USR1"


def _submitit() -> Any:
    os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", PREEMPT_SIGNAL)
    try:
        import submitit
    except ImportError as err:
        raise UsageError("--launcher slurm needs submitit, which is not installed",
                         "pip install 'fxbench[slurm]' (or pip install submitit)") from err
    return submitit


class SlurmJob:
    """The callable submitit pickles for one array task: runs :func:`run_job` on the node."""

    def __init__(self, job: dict[str, Any], skip_existing: bool, threads: int | None) -> None:
        self.job, self.skip_existing, self.threads = job, skip_existing, threads

    def __call__(self) -> dict[str, Any]:
        job = Job.from_dict(self.job)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        # A requeued job (pre-empted, timed out) resumes its run folder instead of refusing it.
        requeued = int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
        result = run_job(job, skip_existing=self.skip_existing or requeued)
        print(f"fxbench job {job.key}: {result.status}" + (f" ({result.reason})" if result.reason else ""),
              flush=True)
        if result.status == "interrupted":
            _requeue_self()
            sys.exit(-1)  # like submitit after a requeue: no result file, the job runs again
        if result.status == "failed":
            raise RuntimeError(f"{job.key} failed: {result.reason}")
        return result.record()

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's pre-emption hook (a signal outside training): requeue the same job; it
        resumes from the run folder's last.pt, so no other state needs saving."""
        return _submitit().helpers.DelayedSubmission(self, *args, **kwargs)


def _requeue_self() -> None:
    submitit = _submitit()
    job_id = submitit.JobEnvironment().job_id
    done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60, check=False)
    if done.returncode:  # SLURM requeues pre-empted jobs itself (PreemptMode=REQUEUE)
        print(f"scontrol requeue {job_id}: {done.stderr.strip()}", file=sys.stderr, flush=True)
    else:
        print(f"requeued {job_id}", flush=True)


def executor_parameters(launcher: LauncherConfig, n_jobs: int, name: str) -> dict[str, Any]:
    """submitit SlurmExecutor parameters from the ``launcher`` config section."""
    params: dict[str, Any] = {
        "job_name": f"fxbench-{name}", "time": launcher.time_min, "cpus_per_task": launcher.cpus,
        "ntasks_per_node": 1, "signal_delay_s": launcher.signal_delay_s,
        "array_parallelism": launcher.jobs or n_jobs,
        "setup": [f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}"],
        "additional_parameters": {"requeue": True},
    }
    if launcher.partition:
        params["partition"] = launcher.partition
    if launcher.gpus:
        params["gpus_per_node"] = launcher.gpus
    if launcher.mem_gb:
        params["mem"] = f"{launcher.mem_gb}GB"
    return params


def submit_sweep(sweep: Sweep, launcher: LauncherConfig, skip_existing: bool = False) -> dict[str, Any]:
    """Submit every job of ``sweep`` as one SLURM array; returns {folder, job_ids}. Returns once
    submitted: ``fxbench show SWEEP`` (or ``runs``) reports the jobs' state."""
    submitit = _submitit()
    folder = (sweep.sweep_dir / "slurm").resolve()
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=10)
    executor.update_parameters(**executor_parameters(launcher, len(sweep.jobs), sweep.sweep_dir.name))
    threads = sweep.base.runtime.num_threads or launcher.cpus
    try:
        with executor.batch():
            handles = [executor.submit(SlurmJob(job.to_dict(), skip_existing, threads)) for job in sweep.jobs]
    except (subprocess.CalledProcessError, OSError, RuntimeError) as err:
        detail = getattr(err, "stderr", None) or getattr(err, "output", None) or err
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        raise FxbenchError(f"sbatch refused the sweep: {str(detail).strip().splitlines()[-1] if str(detail).strip() else err}",
                           "check launcher.partition/time_min/cpus/mem_gb against `sinfo`") from err
    job_ids = [str(h.job_id) for h in handles]
    write_sweep(sweep, [], {
        "name": "slurm", "folder": str(folder), "job_ids": {j.key: jid for j, jid in zip(sweep.jobs, job_ids, strict=True)},
        "parameters": {k: v for k, v in executor_parameters(launcher, len(sweep.jobs), "").items()
                       if k not in ("setup", "additional_parameters", "job_name")},
    })
    return {"folder": str(folder), "job_ids": job_ids}

