"""A sweep is a list of independent jobs: one run folder each, the same resolved config apart
from its seed and/or fold. Every launcher (sequential, local pool, SLURM) runs the same
:func:`run_job`, so a run folder is the same whoever ran it.

Layout (the sweep folder also holds ``sweep.json`` and, for parallel launchers, ``logs/``):

    seeds only      <root>/<name>-sweep/seed_<s>
    folds only      <root>/<name>-cv/fold_<k>              (the cross-validation layout)
    folds x seeds   <root>/<name>-cv/seed_<s>/fold_<k>     (each seed's folds are one CV set)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fxbench.config import Config, LauncherConfig, config_from_dict
from fxbench.errors import FxbenchError, UsageError

#: Sweep record file name, in the sweep folder.
SWEEP_JSON = "sweep.json"


@dataclass(frozen=True)
class Job:
    """One training job: a run folder and the config that trains it."""

    key: str  # unique within the sweep, e.g. "seed_42" or "fold_1" or "seed_42/fold_1"
    run_dir: str
    seed: int
    fold: int | None
    config: dict[str, Any]  # the job's resolved config (Config.model_dump(mode="json"))

    def cfg(self) -> Config:
        return config_from_dict(self.config, source=f"job {self.key}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Job:
        return Job(key=data["key"], run_dir=data["run_dir"], seed=int(data["seed"]),
                   fold=None if data.get("fold") is None else int(data["fold"]), config=dict(data["config"]))


@dataclass
class JobResult:
    """What a job ended as. ``status``: finished, skipped (already finished), interrupted
    (resumable: last.pt holds where it stopped), failed (``reason`` says why)."""

    key: str
    run_dir: str
    seed: int
    fold: int | None
    status: str
    best_epoch: int | None = None
    best_score: float | None = None
    reason: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        out = {"seed": self.seed, "fold": self.fold, "key": self.key, "run_dir": self.run_dir,
               "status": self.status, "best_epoch": self.best_epoch, "best_score": self.best_score}
        if self.reason:
            out["reason"] = self.reason
        return out


@dataclass
class Sweep:
    """A sweep folder and its jobs, in launch order."""

    sweep_dir: Path
    jobs: list[Job]
    base: Config

    def record(self, results: Sequence[JobResult] = (), launcher: dict[str, Any] | None = None) -> dict[str, Any]:
        seeds = sorted({j.seed for j in self.jobs}, key=[j.seed for j in self.jobs].index)
        folds = sorted({j.fold for j in self.jobs if j.fold is not None})
        return {
            "config_sha256_base": self.base.sha256(), "seeds": seeds, "folds": folds or None,
            "selection_metric": self.base.train.selection_metric,
            "launcher": launcher or {"name": "local"},
            "jobs": [{"key": j.key, "seed": j.seed, "fold": j.fold, "run_dir": j.run_dir} for j in self.jobs],
            "results": [r.record() for r in results],
        }


def sweep_jobs(cfg: Config, root: Path, name: str, seeds: Sequence[int] | None = None,
               folds: Sequence[int] | None = None) -> Sweep:
    """The jobs of a sweep over ``seeds`` (default: the config's seed) and/or ``folds``.

    Each job's config is ``cfg`` with its seed (and fold) set and the ``launcher`` section reset to
    its defaults: where a job runs is the sweep's business, so its run folder (config, checkpoints)
    is byte-for-byte what a sequential run leaves.
    """
    if not seeds and not folds:
        raise UsageError("a sweep needs --seeds and/or --folds")
    seed_list = list(seeds) if seeds else [cfg.train.seed]
    if len(set(seed_list)) != len(seed_list):
        raise UsageError(f"--seeds lists a seed twice: {seed_list}", "give each seed once")
    base = cfg.model_copy(update={"launcher": LauncherConfig.model_validate({})})
    sweep_dir = Path(root) / (f"{name}-cv" if folds else f"{name}-sweep")
    jobs: list[Job] = []
    for seed in seed_list:
        seeded = base.model_copy(update={"train": base.train.model_copy(update={"seed": seed})})
        dump = seeded.model_dump(mode="json")
        fold_list: list[int | None] = list(folds) if folds else [None]
        for fold in fold_list:
            if fold is None:
                key = f"seed_{seed}"
            elif seeds:
                key = f"seed_{seed}/fold_{fold}"
            else:
                key = f"fold_{fold}"
            jobs.append(Job(key=key, run_dir=str(sweep_dir / key), seed=seed, fold=fold, config=dump))
    return Sweep(sweep_dir=sweep_dir, jobs=jobs, base=cfg)


# ----------------------------------------------------------------------------- one job


def run_state(run_dir: Path) -> str:
    """``finished`` (run.json says so and last.pt exists), ``partial`` (a last.pt to resume
    from), or ``new`` (nothing to resume: no folder, or stopped before its first checkpoint)."""
    from fxbench.artifacts.run import finished_training

    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return "new"
    return "finished" if finished_training(run_dir) is not None else "partial"


#: Trains ``cfg`` for ``fold`` into ``run_dir`` in place of :func:`fxbench.workflow.train_fold`
#: (tests, other protocols), set through :func:`register_fold_trainer`.
#: Signature: (cfg, fold, run_dir, resume, on_progress) -> summary.
_FOLD_TRAINER: Callable[..., dict[str, Any]] | None = None


def register_fold_trainer(fn: Callable[..., dict[str, Any]]) -> None:
    """Hook for fold jobs: the CV code registers the function that trains one fold."""
    global _FOLD_TRAINER
    _FOLD_TRAINER = fn


def run_job(job: Job, skip_existing: bool = False, on_progress: Callable[[Any], None] | None = None) -> JobResult:
    """Run one job in this process and say how it ended; it never raises for a failed job
    (``failed`` with the one-line reason) so the other jobs of a sweep go on. KeyboardInterrupt
    still propagates.

    ``skip_existing``: a finished run is left untouched (``skipped``), a partial one resumes from
    its last.pt, a new one starts. Without it every job starts fresh, and a folder that already
    holds results is refused (as a single ``fxbench train --run-dir`` would).
    """
    from fxbench.workflow import train_run

    run_dir = Path(job.run_dir)
    base: dict[str, Any] = {"key": job.key, "run_dir": job.run_dir, "seed": job.seed, "fold": job.fold}
    try:
        state = run_state(run_dir) if skip_existing else "new"
        if state == "finished" and job.fold is not None:
            from fxbench.workflow import fold_tested

            if not fold_tested(run_dir):
                state = "partial"  # trained but not yet tuned and tested: train_fold finishes it
        if state == "finished":
            return JobResult(**base, status="skipped", **_best_of(run_dir))
        cfg = job.cfg()
        resume = state == "partial"
        if job.fold is None:
            summary = train_run(cfg, run_dir, resume=resume, on_progress=on_progress)
        else:
            from fxbench.workflow import (
                train_fold,  # train, tune on the inner val, test once on the fold
            )

            trainer = _FOLD_TRAINER or train_fold
            summary = trainer(cfg, job.fold, run_dir, resume=resume, on_progress=on_progress)
    except Exception as err:  # noqa: BLE001 - one job's failure must not stop the sweep
        return JobResult(**base, status="failed", reason=describe_error(err))
    status = summary["status"]
    return JobResult(**base, status=status, best_epoch=summary.get("best_epoch"), best_score=summary.get("best_score"),
                     reason="stopped; resumable from last.pt" if status == "interrupted" else None)


def describe_error(err: BaseException) -> str:
    """One line for a failed job: a typed error's own line, else ``Type: message``."""
    text = str(err) if isinstance(err, FxbenchError) else f"{type(err).__name__}: {err}"
    return (text.strip().splitlines() or [type(err).__name__])[0][:300]


def _best_of(run_dir: Path) -> dict[str, Any]:
    from fxbench.io import read_json

    try:
        info = read_json(run_dir / "run.json")
    except (OSError, ValueError, FxbenchError):
        return {}
    return {"best_epoch": info.get("best_epoch"), "best_score": info.get("best_score")}


def cpu_slots() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1
