"""One job in its own process: ``python -m fxbench.launch.worker`` (spawned by the local pool).

Reads ``{"job": {...}, "skip_existing": bool, "threads": int | null}`` as JSON on stdin and
writes JSON lines on stdout: ``{"event": "step"|"val", ...}`` while training (at most a few a
second) and one last ``{"event": "result", ...}`` (a :class:`~fxbench.launch.jobs.JobResult`).
Anything else (warnings, tracebacks) goes to stderr, which the pool keeps in the sweep's logs/.
Exit code: 0 finished or skipped, 130 interrupted, 1 failed.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from typing import Any, TextIO


class ProgressWriter:
    """Trainer progress callback -> throttled JSON lines (``min_interval_s`` between step lines)."""

    def __init__(self, stream: TextIO, min_interval_s: float = 0.5) -> None:
        self.stream, self.min_interval_s, self.last = stream, min_interval_s, 0.0

    def emit(self, obj: dict[str, Any]) -> None:
        self.stream.write(json.dumps(obj, default=str) + "\n")
        self.stream.flush()

    def __call__(self, p: Any) -> None:
        now = time.monotonic()
        if p.event == "step" and p.step != p.steps_per_epoch and now - self.last < self.min_interval_s:
            return
        self.last = now
        event: dict[str, Any] = {"event": p.event, "epoch": p.epoch, "epochs": p.epochs, "step": p.step,
                                 "steps": p.steps_per_epoch, "loss": p.loss, "img_per_s": p.img_per_s}
        if p.event == "val":
            event["val"] = {k: v for k, v in p.val.items() if k in ("dice_pos", "roc_auc_presence", "loss")}
        self.emit(event)


def main(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    spec = json.loads(stdin.read())
    writer = ProgressWriter(stdout)
    threads = spec.get("threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from fxbench.launch.jobs import Job, JobResult, run_job

    job = Job.from_dict(spec["job"])
    try:
        result = run_job(job, skip_existing=bool(spec.get("skip_existing")), on_progress=writer)
    except KeyboardInterrupt:  # before the trainer's own handler was installed: nothing written yet
        result = JobResult(job.key, job.run_dir, job.seed, job.fold, status="interrupted",
                           reason="interrupted before training started")
    writer.emit({"event": "result", **asdict(result)})
    return {"finished": 0, "skipped": 0, "interrupted": 130}.get(result.status, 1)


if __name__ == "__main__":
    sys.exit(main())
