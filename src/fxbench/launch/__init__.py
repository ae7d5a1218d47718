"""Sweeps as jobs: each seed/fold is an independent run folder, run by a launcher.

- :mod:`fxbench.launch.jobs`: the job list of a sweep and :func:`run_job` (one job, in-process).
- :mod:`fxbench.launch.local`: sequential, or N at a time in worker processes on this machine.
- :mod:`fxbench.launch.slurm`: a SLURM job array through submitit (``pip install fxbench[slurm]``);
  imported only when that launcher is used.
- :mod:`fxbench.launch.state`: what state a submitted sweep's jobs are in (``runs`` / ``show``).
"""

from fxbench.launch.jobs import Job, JobResult, Sweep, run_job, sweep_jobs

__all__ = ["Job", "JobResult", "Sweep", "run_job", "sweep_jobs"]
