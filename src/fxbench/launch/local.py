"""The local launcher: a sweep's jobs one after another in this process, or N at a time in
worker processes (one per visible GPU on CUDA; on CPU, the cores split between the jobs).

A failed job does not stop the others. Ctrl-C (SIGINT) or SIGTERM stops every job resumably:
running jobs checkpoint at their next step (the trainer's own handler), jobs not yet started
are left alone; ``--skip-existing`` then resumes the sweep where it stopped.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxbench.config import Config
from fxbench.io import write_json_atomic
from fxbench.launch.jobs import SWEEP_JSON, Job, JobResult, Sweep, cpu_slots, run_job
from fxbench.launch.state import log_tail

#: Events for a display: (job key, event dict). Events: start (with "slot"), step, val,
#: result (a JobResult as a dict), note (launcher messages, key "").
OnEvent = Callable[[str, dict[str, Any]], None]


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: a GPU (``cuda``: CUDA_VISIBLE_DEVICES) and/or a thread count."""

    label: str
    cuda: str | None = None
    threads: int | None = None


def visible_gpus(cfg: Config) -> list[str]:
    """GPU ids a job may be pinned to ([] for CPU runs or without CUDA)."""
    if cfg.runtime.device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in env.split(",") if d.strip()] if env else []
    return ids or [str(i) for i in range(torch.cuda.device_count())]


def plan_slots(cfg: Config, jobs: int, gpus: Sequence[str] | None = None, cores: int | None = None) -> list[Slot]:
    """``jobs`` worker slots: on CUDA one per visible GPU (at most that many), on CPU a pool of
    ``jobs`` whose threads split the cores (``runtime.num_threads`` when set wins)."""
    gpus = visible_gpus(cfg) if gpus is None else list(gpus)
    cores = cpu_slots() if cores is None else cores
    if gpus:
        n = max(1, min(jobs, len(gpus)))
        threads = cfg.runtime.num_threads or max(1, cores // n)
        return [Slot(f"cuda:{g}", cuda=g, threads=threads) for g in gpus[:n]]
    threads = cfg.runtime.num_threads or max(1, cores // max(1, jobs))
    return [Slot(f"cpu x{threads}", threads=threads) for _ in range(jobs)]


def write_sweep(sweep: Sweep, results: Sequence[JobResult], launcher: dict[str, Any]) -> None:
    sweep.sweep_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(sweep.sweep_dir / SWEEP_JSON, sweep.record(results, launcher))


def _ordered(sweep: Sweep, done: dict[str, JobResult]) -> list[JobResult]:
    return [done[j.key] for j in sweep.jobs if j.key in done]


def _not_started(job: Job) -> JobResult:
    return JobResult(job.key, job.run_dir, job.seed, job.fold, status="interrupted", reason="not started")


def run_sequential(sweep: Sweep, skip_existing: bool = False, on_progress: Callable[[Any], None] | None = None,
                   on_start: Callable[[Job], None] | None = None) -> list[JobResult]:
    """Jobs one after another in this process (the default, as ``train --seeds`` always did).
    An interrupted job (Ctrl-C) stops the sweep; later jobs are reported as not started."""
    launcher = {"name": "local", "jobs": 1}
    done: dict[str, JobResult] = {}
    write_sweep(sweep, [], launcher)
    stopping = False
    for job in sweep.jobs:
        if stopping:
            done[job.key] = _not_started(job)
            continue
        if on_start:
            on_start(job)
        try:
            result = run_job(job, skip_existing=skip_existing, on_progress=on_progress)
        except KeyboardInterrupt:
            result = JobResult(job.key, job.run_dir, job.seed, job.fold, status="interrupted",
                               reason="interrupted before training started")
        done[job.key] = result
        stopping = result.status == "interrupted"
        write_sweep(sweep, _ordered(sweep, done), launcher)
    return _ordered(sweep, done)


class _Pool:
    """Worker processes fed from a queue of jobs; one reader thread per worker."""

    def __init__(self, sweep: Sweep, slots: Sequence[Slot], skip_existing: bool, on_event: OnEvent) -> None:
        self.sweep, self.slots, self.skip_existing, self.on_event = sweep, list(slots), skip_existing, on_event
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.running: dict[str, tuple[subprocess.Popen[str], int]] = {}  # key -> (process, slot index)
        self.results: dict[str, JobResult] = {}
        self.stop: str | None = None
        self.logs = sweep.sweep_dir / "logs"

    def _start(self, job: Job, slot_idx: int) -> None:
        slot = self.slots[slot_idx]
        env = dict(os.environ)
        if slot.cuda is not None:
            env["CUDA_VISIBLE_DEVICES"] = slot.cuda
        if slot.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(slot.threads)
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{job.key.replace('/', '__')}.log"
        log = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed when the worker ends
        # A session of its own: the terminal's Ctrl-C reaches only us, and we forward it, so a
        # worker still importing torch is not killed half-way through its set-up.
        proc = subprocess.Popen(
            [sys.executable, "-m", "fxbench.launch.worker"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=log, text=True, env=env, start_new_session=True,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps({"job": job.to_dict(), "skip_existing": self.skip_existing,
                                     "threads": slot.threads}))
        proc.stdin.close()
        self.running[job.key] = (proc, slot_idx)
        threading.Thread(target=self._read, args=(job, proc, log, log_path), daemon=True).start()
        self.on_event(job.key, {"event": "start", "slot": slot.label, "run_dir": job.run_dir, "log": str(log_path)})

    def _read(self, job: Job, proc: subprocess.Popen[str], log: Any, log_path: Path) -> None:
        assert proc.stdout is not None
        result: dict[str, Any] | None = None
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") == "result":
                result = event
            else:
                self.events.put((job.key, event))
        rc = proc.wait()
        log.close()
        if result is None:
            result = {"event": "result", "key": job.key, "run_dir": job.run_dir, "seed": job.seed, "fold": job.fold,
                      "status": "failed", "reason": _exit_reason(rc, log_path)}
        self.events.put((job.key, {**result, "rc": rc}))

    def _on_signal(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        first = self.stop is None
        self.stop = signal.Signals(signum).name
        for proc, _slot in list(self.running.values()):
            try:
                proc.send_signal(signal.SIGINT)
            except OSError:
                pass
        self.on_event("", {"event": "note", "text": "stopping: running jobs checkpoint and stop; rerun with "
                           "--skip-existing to resume" if first else "still waiting for jobs to checkpoint"})

    def run(self) -> list[JobResult]:
        launcher = {"name": "local", "jobs": len(self.slots), "slots": [s.label for s in self.slots]}
        write_sweep(self.sweep, [], launcher)
        pending = list(self.sweep.jobs)
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread
                pass
        try:
            while pending or self.running:
                busy = {slot for _p, slot in self.running.values()}
                free = [i for i in range(len(self.slots)) if i not in busy]
                while self.stop is None and pending and free:
                    self._start(pending.pop(0), free.pop(0))
                if self.stop is not None and pending:
                    for job in pending:
                        self.results[job.key] = _not_started(job)
                    pending = []
                if not self.running:
                    break
                try:
                    key, event = self.events.get(timeout=0.5)
                except queue.Empty:
                    continue
                if event.get("event") == "result":
                    self.running.pop(key, None)
                    fields: dict[str, Any] = {k: event.get(k) for k in (
                        "key", "run_dir", "seed", "fold", "status", "best_epoch", "best_score", "reason")}
                    self.results[key] = JobResult(**fields)
                    write_sweep(self.sweep, _ordered(self.sweep, self.results), launcher)
                self.on_event(key, event)
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        write_sweep(self.sweep, _ordered(self.sweep, self.results), launcher)
        return _ordered(self.sweep, self.results)


def _exit_reason(rc: int, log_path: Path) -> str:
    how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exited with code {rc}"
    tail = log_tail(log_path, 1)
    return f"worker {how}" + (f": {tail[-1]}" if tail else f" (log: {log_path})")


def run_parallel(sweep: Sweep, slots: Sequence[Slot], skip_existing: bool = False,
                 on_event: OnEvent | None = None) -> list[JobResult]:
    """Jobs ``len(slots)`` at a time, each in a worker process; returns every job's result in
    sweep order (jobs a Ctrl-C kept from starting: ``interrupted`` / "not started")."""
    return _Pool(sweep, slots, skip_existing, on_event or (lambda key, event: None)).run()


def sweep_exit_code(results: Sequence[JobResult]) -> int:
    """1 if any job failed, else 130 if any was interrupted, else 0."""
    statuses = {r.status for r in results}
    return 1 if "failed" in statuses else 130 if "interrupted" in statuses else 0
