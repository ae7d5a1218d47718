"""`fxbench train`: train one run, resume one, or sweep seeds."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from fxbench.cli.common import console, handle_errors
from fxbench.cli.config_cmd import complete_set_key


class TrainDisplay:
    """Rich progress bar (epoch, step, loss, lr, img/s, ETA) or plain lines with --quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress: Any = None
        self.task: Any = None
        self.task_epoch: int | None = None
        self.t0 = time.perf_counter()

    def __enter__(self) -> TrainDisplay:
        if not self.quiet:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                TextColumn("step {task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]:.4f}"),
                TextColumn("lr {task.fields[lr]:.2e}"), TextColumn("{task.fields[ips]:.1f} img/s"),
                TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
            )
            self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def __call__(self, p: Any) -> None:
        if p.event == "val":
            v = p.val
            line = (f"epoch {p.epoch}/{p.epochs} val dice_pos {v.get('dice_pos', float('nan')):.4f} "
                    f"auc {v.get('roc_auc_presence', float('nan')):.4f} ap {v.get('average_precision_presence', float('nan')):.4f}")
            console.print(line, markup=False)
            return
        if p.event == "early_stop":
            console.print(f"early stopping after epoch {p.epoch}")
            return
        if self.progress is None:
            if p.step == p.steps_per_epoch:
                console.print(f"epoch {p.epoch}/{p.epochs} loss {p.loss:.4f} lr {p.lr:.2e} {p.img_per_s:.1f} img/s",
                              markup=False)
            return
        if self.task is None or self.task_epoch != p.epoch:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task_epoch = p.epoch
            self.task = self.progress.add_task("train", total=p.steps_per_epoch, epoch=f"{p.epoch}/{p.epochs}",
                                               loss=p.loss, lr=p.lr, ips=p.img_per_s)
        self.progress.update(self.task, completed=p.step, loss=p.loss, lr=p.lr, ips=p.img_per_s)


def _parse_seeds(text: str) -> list[int]:
    from fxbench.errors import UsageError

    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UsageError(f"--seeds '{text}' is not a comma-separated list of integers", "e.g. --seeds 42,1337,2025") from None
    if not seeds:
        raise UsageError("--seeds is empty", "e.g. --seeds 42,1337,2025")
    return seeds


@handle_errors
def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config file (examples/ has recipes)."),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help="Override: section.key=value (repeatable).",
                                          autocompletion=complete_set_key),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run folder (default: ./runs/<name>-<time>)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: config name or model name)."),
    resume: Path | None = typer.Option(None, "--resume", help="Resume an interrupted run folder exactly."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seed sweep: one run per seed, e.g. 42,1337,2025."),
    init_checkpoint: Path | None = typer.Option(None, "--init-checkpoint", help="Warm start from an fxbench checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain log lines instead of a progress bar."),
) -> None:
    """Train a segmentation / presence model on the prepared data."""
    from fxbench.config import load_config
    from fxbench.errors import UsageError
    from fxbench.paths import default_runs_root, new_run_dir
    from fxbench.train.loop import dist_info
    from fxbench.workflow import train_run, train_sweep

    rank, _world = dist_info()
    overrides = list(set_ or [])
    if init_checkpoint is not None:
        overrides.append(f"train.init_checkpoint={init_checkpoint}")
    if resume is not None:
        if config is not None or overrides or seeds:
            raise UsageError("--resume takes the run's own config; drop --config/--set/--seeds",
                             "a resumed run must not change its settings")
        from fxbench.predict.infer import load_run_config

        cfg = load_run_config(resume)
        with TrainDisplay(quiet or rank != 0) as display:
            summary = train_run(cfg, resume, resume=True, on_progress=display)
        _report(summary)
        return
    cfg = load_config(config, overrides)
    label = name or cfg.name or (config.stem if config else cfg.model.name)
    root = default_runs_root()
    if seeds:
        with TrainDisplay(quiet) as display:
            out = train_sweep(cfg, _parse_seeds(seeds), root if run_dir is None else run_dir, label,
                              on_progress=display,
                              on_start=lambda s, d: console.print(f"seed {s} -> {d}", markup=False))
        from rich.table import Table

        table = Table(title=f"seed sweep ({cfg.train.selection_metric})")
        for col in ("seed", "status", "best epoch", "best val", "run"):
            table.add_column(col)
        for r in out["results"]:
            score = "-" if r["best_score"] is None else f"{r['best_score']:.4f}"
            table.add_row(str(r["seed"]), r["status"], str(r["best_epoch"]), score, r["run_dir"])
        console.print(table)
        console.print(f"next: fxbench ensemble {' '.join(r['run_dir'] for r in out['results'])} --out {out['sweep_dir']}/ensemble",
                      markup=False)
        return
    if run_dir is None:
        run_dir = new_run_dir(root, label) if rank == 0 else None
        if rank != 0:
            raise UsageError("distributed training needs an explicit --run-dir shared by all ranks")
    console.print(f"run folder: {run_dir}", markup=False)
    with TrainDisplay(quiet or rank != 0) as display:
        summary = train_run(cfg, run_dir, on_progress=display)
    if rank == 0:
        _report(summary)


def _report(summary: dict[str, Any]) -> None:
    run = summary["run_dir"]
    score = summary.get("best_score")
    console.print(f"{summary['status']}: best epoch {summary.get('best_epoch')} "
                  f"(val {'-' if score is None else f'{score:.4f}'}) in {run}", markup=False)
    if summary["status"] == "interrupted":
        console.print(f"resume with: fxbench train --resume {run}", markup=False)
        raise typer.Exit(130)
    console.print(f"next: fxbench eval {run} --split val   then   fxbench tune {run}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
