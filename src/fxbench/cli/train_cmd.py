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
    set_: list[str] | None = typer.Option(None, "--set", "-s", help="Override: section.key=value (repeatable); "
                                          "`fxbench config keys` lists every key with type, default and meaning.",
                                          autocompletion=complete_set_key),
    run_dir: Path | None = typer.Option(None, "--run-dir", help="Run folder (default: ./runs/<name>-<time>)."),
    name: str | None = typer.Option(None, "--name", help="Run name (default: config name or model name)."),
    resume: Path | None = typer.Option(None, "--resume", help="Resume an interrupted run folder exactly."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seed sweep: one run per seed, e.g. 42,1337,2025."),
    launcher: str | None = typer.Option(None, "--launcher", help="Sweep launcher: local (default) or slurm "
                                        "(= --set launcher.name=...)."),
    jobs: int | None = typer.Option(None, "--jobs", "-j", min=1, help="Sweep jobs at once (= --set launcher.jobs=N); "
                                    "local: one per GPU on CUDA, cores split on CPU."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Sweep: keep finished runs untouched, resume "
                                       "interrupted ones, start the rest."),
    init_checkpoint: Path | None = typer.Option(None, "--init-checkpoint", help="Warm start from an fxbench checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Plain log lines instead of a progress bar."),
    fold: int | None = typer.Option(None, "--fold", min=0, help="Cross-validation fold k (needs `prepare --folds K`): train, eval val, tune, then test once on fold k; run folder <name>-cv/fold_<k>."),
    folds: str | None = typer.Option(None, "--folds", help="Cross-validation sweep: `all` or a list like 0,2; one fold run each under <name>-cv/fold_<k>."),
) -> None:
    """Train a segmentation / presence model on the prepared data.

    Settings: --config FILE.yaml and --set section.key=value; `fxbench config keys [TEXT]` lists
    every key with its type, default and description (docs/config.md has the same table).
    """
    from fxbench.config import load_config
    from fxbench.errors import FxbenchError, UsageError
    from fxbench.paths import default_runs_root, new_run_dir
    from fxbench.runtime import dist_info
    from fxbench.workflow import train_run

    rank, _world = dist_info()
    overrides = list(set_ or [])
    if init_checkpoint is not None:
        overrides.append(f"train.init_checkpoint={init_checkpoint}")
    if launcher is not None:
        overrides.append(f"launcher.name={launcher}")
    if jobs is not None:
        overrides.append(f"launcher.jobs={jobs}")
    if not seeds and fold is None and folds is None and (launcher is not None or jobs is not None or skip_existing):
        raise UsageError("--launcher, --jobs and --skip-existing are for sweeps",
                         "add --seeds (e.g. --seeds 42,1337,2025) or --folds all")
    if resume is not None:
        if config is not None or overrides or seeds or fold is not None or folds is not None:
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
    if fold is not None or folds is not None:
        _train_cv(cfg, fold, folds, _parse_seeds(seeds) if seeds else None, root, run_dir, label, skip_existing, quiet)
        return
    if seeds:
        _sweep(cfg, _parse_seeds(seeds), root if run_dir is None else run_dir, label, skip_existing, quiet)
        return
    if run_dir is None:
        run_dir = new_run_dir(root, label) if rank == 0 else None
        if rank != 0:
            raise UsageError("distributed training needs an explicit --run-dir shared by all ranks")
    console.print(f"run folder: {run_dir}", markup=False)
    assert run_dir is not None  # rank 0 made one; other ranks refused above
    fresh = not run_dir.exists() or not any(run_dir.iterdir())
    try:
        with TrainDisplay(quiet or rank != 0) as display:
            summary = train_run(cfg, run_dir, on_progress=display)
    except FxbenchError:
        if fresh and rank == 0 and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()  # stopped before writing anything (e.g. a missing cache): leave no empty folder
        raise
    if rank == 0:
        _report(summary)


def _sweep(cfg: Any, seeds: list[int] | None, root: Path, label: str, skip_existing: bool, quiet: bool,
           folds: list[int] | None = None) -> None:
    """Run (or submit) a seed and/or fold sweep and say how each job ended; exit 1 if one
    failed, 130 if one was interrupted."""
    from fxbench.cli.sweep_view import SweepView, print_summary
    from fxbench.launch.jobs import sweep_jobs
    from fxbench.launch.local import plan_slots, run_parallel, run_sequential, sweep_exit_code

    metric = cfg.train.selection_metric
    if cfg.launcher.name == "slurm":
        from fxbench.launch.slurm import submit_sweep

        sweep = sweep_jobs(cfg, root.resolve(), label, seeds=seeds, folds=folds)  # nodes may start elsewhere
        info = submit_sweep(sweep, cfg.launcher, skip_existing=skip_existing)
        console.print(f"submitted {len(info['job_ids'])} SLURM jobs ({', '.join(info['job_ids'])}); "
                      f"logs in {info['folder']}", markup=False)
        console.print(f"state: fxbench show {sweep.sweep_dir}   (or fxbench runs {sweep.sweep_dir.parent})", markup=False)
        return
    sweep = sweep_jobs(cfg, root, label, seeds=seeds, folds=folds)
    n = cfg.launcher.jobs or 1
    if n == 1:
        with TrainDisplay(quiet) as display:
            results = run_sequential(sweep, skip_existing, on_progress=display,
                                     on_start=lambda j: console.print(f"{j.key} -> {j.run_dir}", markup=False))
    else:
        slots = plan_slots(cfg, n)
        if len(slots) < n:
            console.print(f"--jobs {n}: {len(slots)} visible GPU(s), so {len(slots)} jobs at a time", markup=False)
        with SweepView(console, sweep.jobs, metric, live=False if quiet else None) as view:
            results = run_parallel(sweep, slots, skip_existing, on_event=view)
    print_summary(console, results, metric, "cross-validation folds" if folds else "seed sweep")
    done = [r.run_dir for r in results if r.status in ("finished", "skipped")]
    code = sweep_exit_code(results)
    if code == 0 and folds:
        console.print(f"next: fxbench cv {' '.join(done)}" if not seeds else
                      f"next: fxbench cv {sweep.sweep_dir}/seed_<s>/fold_*  (one pool per seed)", markup=False)
    elif code == 0:
        console.print(f"next: fxbench ensemble {' '.join(done)} --out {sweep.sweep_dir}/ensemble", markup=False)
    else:
        raise typer.Exit(code)


def _parse_folds(text: str, k: int) -> list[int]:
    from fxbench.errors import UsageError

    if text.strip() == "all":
        return list(range(k))
    try:
        out = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UsageError(f"--folds '{text}' is neither `all` nor a comma-separated list of folds", "e.g. --folds all") from None
    bad = [f for f in out if not 0 <= f < k]
    if bad or not out or len(set(out)) != len(out):
        raise UsageError(f"--folds '{text}': the prepared folder has folds 0..{k - 1} (each once)", "e.g. --folds all")
    return out


def _train_cv(cfg: Any, fold: int | None, folds: str | None, seeds: list[int] | None, root: Path,
              run_dir: Path | None, label: str, skip_existing: bool, quiet: bool) -> None:
    """``--fold k`` / ``--folds all``: fold runs under ``root/<label>-cv/fold_<k>`` (with
    ``--seeds``: ``<label>-cv/seed_<s>/fold_<k>``), through the sweep launchers.

    ``--fold k --run-dir DIR`` (no seeds) trains that one fold run into DIR itself.
    """
    from fxbench.errors import UsageError
    from fxbench.workflow import cv_fold_count, train_fold

    if fold is not None and folds is not None:
        raise UsageError("give --fold or --folds, not both")
    k = cv_fold_count(cfg)
    chosen = [fold] if fold is not None else _parse_folds(folds or "", k)
    if chosen[0] >= k:
        raise UsageError(f"--fold {chosen[0]}: the prepared folder has folds 0..{k - 1}")
    if fold is not None and run_dir is not None and not seeds:
        console.print(f"fold {fold} -> {run_dir}", markup=False)
        with TrainDisplay(quiet) as display:
            summary = train_fold(cfg, fold, run_dir, on_progress=display)
        if summary["status"] == "interrupted":
            console.print(f"resume with: fxbench train --fold {fold} --run-dir {run_dir} --skip-existing ...", markup=False)
            raise typer.Exit(130)
        console.print(f"fold {fold} tested once: {summary['test_metrics']}", markup=False)
        return
    _sweep(cfg, seeds, root if run_dir is None else run_dir, label, skip_existing, quiet, folds=chosen)


def _report(summary: dict[str, Any]) -> None:
    run = summary["run_dir"]
    score = summary.get("best_score")
    from fxbench.io import read_json

    info = Path(run) / "run.json"
    metric = (read_json(info).get("selection_metric") if info.is_file() else None) or "selection metric"
    console.print(f"{summary['status']}: best epoch {summary.get('best_epoch')} "
                  f"(val {metric} {'-' if score is None else f'{score:.4f}'}) in {run}", markup=False)
    if summary["status"] == "interrupted":
        console.print(f"resume with: fxbench train --resume {run}", markup=False)
        raise typer.Exit(130)
    console.print(f"next: fxbench eval {run} --split val   then   fxbench tune {run}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
