"""Display of a sweep's jobs: a Rich live table in a terminal (one row per job), plain lines
when piped; then the summary table, the failures with their reasons, and the next command."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from fxbench.launch.jobs import Job, JobResult

_LIVE_COLUMNS = ("job", "status", "where", "epoch", "step", "loss", "val", "note")


def _fmt(value: Any, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec) if isinstance(value, float) else str(value)


class SweepView:
    """``on_event`` callback for :func:`fxbench.launch.local.run_parallel`."""

    def __init__(self, console: Console, jobs: Sequence[Job], metric: str, live: bool | None = None) -> None:
        self.console, self.metric = console, metric
        self.rows: dict[str, dict[str, str]] = {j.key: {"status": "pending"} for j in jobs}
        self.live_on = console.is_terminal if live is None else live
        self.live: Any = None

    def __enter__(self) -> SweepView:
        if self.live_on:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.__exit__(*exc)

    def _table(self) -> Table:
        table = Table(title="sweep jobs")
        for col in _LIVE_COLUMNS:
            table.add_column(col, no_wrap=col != "note", overflow="fold")
        for key, row in self.rows.items():
            table.add_row(key, *(row.get(c, "") for c in _LIVE_COLUMNS[1:]))
        return table

    def _line(self, text: str) -> None:
        if self.live is not None:
            self.live.console.print(text, markup=False)
        else:
            self.console.print(text, markup=False)

    def __call__(self, key: str, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "note":
            self._line(str(event.get("text")))
            return
        row = self.rows.setdefault(key, {})
        if kind == "start":
            row.update(status="running", where=str(event.get("slot")))
            if self.live is None:
                self._line(f"{key}: started on {event.get('slot')} -> {event.get('run_dir')} (log {event.get('log')})")
        elif kind in ("step", "val"):
            row.update(epoch=f"{event.get('epoch')}/{event.get('epochs')}", step=f"{event.get('step')}/{event.get('steps')}")
            if kind == "step":
                row["loss"] = _fmt(event.get("loss"))
            else:
                val = event.get("val") or {}
                row["val"] = f"dice_pos {_fmt(val.get('dice_pos'))} auc {_fmt(val.get('roc_auc_presence'))}"
                if self.live is None:
                    self._line(f"{key}: epoch {row['epoch']} {row['val']}")
        elif kind == "result":
            status = str(event.get("status"))
            row.update(status=status, note=str(event.get("reason") or ""))
            if status in ("finished", "skipped"):
                row["note"] = f"best {self.metric} {_fmt(event.get('best_score'))} @ {_fmt(event.get('best_epoch'))}"
            if self.live is None:
                self._line(f"{key}: {status}" + (f" ({row['note']})" if row.get("note") else ""))
        if self.live is not None:
            self.live.update(self._table())


def print_summary(console: Console, results: Sequence[JobResult], metric: str, title: str) -> None:
    """The sweep's table, then one line per failed job with its reason."""
    table = Table(title=f"{title} ({metric})")
    for col in ("job", "status", "best epoch", "best val", "run"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(r.key, r.status, _fmt(r.best_epoch), _fmt(r.best_score), r.run_dir)
    console.print(table)
    failed = [r for r in results if r.status == "failed"]
    stopped = [r for r in results if r.status == "interrupted"]
    for r in failed:
        console.print(f"failed: {r.key}: {r.reason}", markup=False)
    if failed or stopped:
        counts = f"{len(failed)} failed, {len(stopped)} interrupted or not started, {len(results)} jobs"
        console.print(f"sweep incomplete: {counts}; fix the cause and rerun the same command with "
                      "--skip-existing (finished jobs are kept, interrupted ones resume)", markup=False)


def print_sweep_state(console: Console, sweep_dir: Any, record: dict[str, Any], states: Sequence[Any]) -> None:
    """`fxbench show SWEEP`: one row per job (state, SLURM id, best val, run), then the log tail
    of every failed job."""
    from fxbench.launch.state import state_counts

    launcher = (record.get("launcher") or {}).get("name", "local")
    counts = ", ".join(f"{n} {s}" for s, n in state_counts(list(states)).items())
    console.print(f"sweep {sweep_dir} ({launcher}): {counts or 'no jobs'}", markup=False)
    table = Table(title=f"jobs ({record.get('selection_metric', 'best val')})")
    for col in ("job", "state", "slurm id", "best epoch", "best val", "run"):
        table.add_column(col, overflow="fold")
    for s in states:
        table.add_row(s.key, s.state, s.slurm_id or "-", _fmt(s.best_epoch), _fmt(s.best_score), s.run_dir)
    console.print(table, soft_wrap=False)
    for s in states:
        if s.state != "failed":
            continue
        console.print(f"failed: {s.key}: {s.reason or 'see the log'}" + (f"  (log {s.log})" if s.log else ""),
                      markup=False)
        for line in s.log_tail:
            console.print(f"    {line}", markup=False)
