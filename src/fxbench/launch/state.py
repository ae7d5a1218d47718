"""What state each job of a sweep is in, from its run folder, ``sweep.json`` and (for a SLURM
sweep) the queue: pending, running, finished, failed (with the log tail), interrupted.

Read-only and light (no torch, no submitit): ``fxbench runs`` and ``fxbench show`` call it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fxbench.launch.jobs import SWEEP_JSON

#: squeue states -> our words (anything else is shown lower-cased).
_QUEUE = {"PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
          "CONFIGURING": "pending", "RESV_DEL_HOLD": "pending", "RUNNING": "running", "COMPLETING": "running",
          "SUSPENDED": "suspended", "STOPPED": "suspended", "SIGNALING": "running", "STAGE_OUT": "running"}


@dataclass
class JobState:
    key: str
    run_dir: str
    state: str  # pending | running | finished | failed | interrupted | unknown
    slurm_id: str | None = None
    queue_state: str | None = None
    best_epoch: int | None = None
    best_score: float | None = None
    reason: str | None = None
    log: str | None = None
    log_tail: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_JSON).is_file()


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path, lines: int = 10) -> list[str]:
    """The last ``lines`` non-empty lines of a text log ([] when missing)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    return [ln for ln in text.splitlines() if ln.strip()][-lines:]


def slurm_log_paths(folder: Path, job_id: str) -> tuple[Path, Path]:
    """(stdout, stderr) of an array task as submitit names them: <array>_<task>_0_log.{out,err}."""
    return Path(folder) / f"{job_id}_0_log.out", Path(folder) / f"{job_id}_0_log.err"


def queue_states(job_ids: list[str]) -> dict[str, str] | None:
    """``{array task id: squeue state}`` for the jobs still queued or running; None when squeue
    is not available here (not on the cluster) or fails."""
    if not job_ids or shutil.which("squeue") is None:
        return None
    arrays = sorted({j.split("_")[0] for j in job_ids})
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-j", ",".join(arrays), "-o", "%i|%T"],
                              capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode:
        # squeue fails for ids that left the queue long ago ("Invalid job id"): none queued
        return {} if "Invalid job id" in done.stderr else None
    out: dict[str, str] = {}
    for line in done.stdout.splitlines():
        jid, _, st = line.strip().partition("|")
        if jid:
            out[jid] = st.strip()
    return out


def sweep_states(sweep_dir: Path, tail: int = 10) -> tuple[dict[str, Any], list[JobState]]:
    """(the sweep record, one JobState per job in sweep order)."""
    record = _read_json(Path(sweep_dir) / SWEEP_JSON) or {}
    launcher = record.get("launcher") or {}
    results = {r.get("key") or f"seed_{r.get('seed')}": r for r in record.get("results") or [] if isinstance(r, dict)}
    jobs = record.get("jobs") or [{"key": k, "run_dir": r.get("run_dir")} for k, r in results.items()]
    slurm_ids: dict[str, str] = dict(launcher.get("job_ids") or {}) if launcher.get("name") == "slurm" else {}
    queue = queue_states(list(slurm_ids.values())) if slurm_ids else None
    states = []
    for job in jobs:
        key, run_dir = str(job.get("key")), str(job.get("run_dir"))
        info = _read_json(Path(run_dir) / "run.json") or {}
        st = JobState(key=key, run_dir=run_dir, state="pending", slurm_id=slurm_ids.get(key),
                      best_epoch=info.get("best_epoch"), best_score=info.get("best_score"))
        run_status = info.get("status")
        result = results.get(key) or {}
        if st.slurm_id is not None:
            _slurm_state(st, run_status, queue, Path(launcher.get("folder") or Path(sweep_dir) / "slurm"), tail)
        else:
            st.state = {"finished": "finished", "failed": "failed", "interrupted": "interrupted",
                        "running": "running"}.get(str(run_status), "pending")
            if result.get("status") in ("failed", "interrupted", "skipped"):
                st.state = "finished" if result["status"] == "skipped" else result["status"]
                st.reason = result.get("reason")
            log = Path(sweep_dir) / "logs" / f"{key.replace('/', '__')}.log"
            if st.state == "failed" and log.is_file():
                st.log, st.log_tail = str(log), log_tail(log, tail)
        states.append(st)
    return record, states


def _slurm_state(st: JobState, run_status: Any, queue: dict[str, str] | None, folder: Path, tail: int) -> None:
    assert st.slurm_id is not None
    out, err = slurm_log_paths(folder, st.slurm_id)
    queued = None if queue is None else queue.get(st.slurm_id)
    st.queue_state = queued
    if run_status == "finished" and not queued:
        st.state = "finished"
    elif queued:
        st.state = _QUEUE.get(queued, queued.lower())
    elif queue is None and run_status in ("running", None):
        st.state = "unknown"  # no squeue here: cannot tell pending from lost
        st.reason = "squeue not available on this machine"
    else:  # left the queue without finishing
        st.state = "failed"
        st.log, st.log_tail = str(err), log_tail(err, tail) or log_tail(out, tail)
        st.reason = next((ln for ln in reversed(st.log_tail) if "Error" in ln or "failed" in ln), None) or (
            f"left the queue with run status {run_status or 'not started'}")


def state_counts(states: list[JobState]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in states:
        counts[s.state] = counts.get(s.state, 0) + 1
    return counts
