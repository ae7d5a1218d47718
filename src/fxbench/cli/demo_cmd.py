"""`fxbench demo`: the whole protocol on a generated FracAtlas-layout archive, in about a minute.

synth -> prepare -> train (small unet_dual) -> eval val -> tune (val) -> eval test (sealed,
once) -> report. Everything lands in one folder, and the commands that reproduce each step
are printed, so the demo doubles as a tour of the real workflow.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer

from fxbench.cli.common import console, handle_errors, out


@handle_errors
def demo(
    out_dir: Path | None = typer.Option(
        None, "--out", help="Folder for the archive, prepared data and runs (default: <cache dir>/fxbench/demo, "
        "e.g. ~/.cache/fxbench/demo; $FXBENCH_HOME/demo when FXBENCH_HOME is set)."),
    n_images: int = typer.Option(160, "--n-images", help="Synthetic radiographs to generate."),
    epochs: int = typer.Option(8, "--epochs", help="Training epochs."),
    image_size: int = typer.Option(64, "--image-size", help="Network input size (multiple of 32)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the archive and training."),
    force: bool = typer.Option(False, "--force", help="Start over even if the folder has a demo in it."),
) -> None:
    """Run the full benchmark protocol on a small synthetic archive and print the results."""
    import shutil

    from fxbench.cli.eval_cmds import box_table, metrics_table
    from fxbench.config import load_config
    from fxbench.data.prepare import prepare
    from fxbench.data.synthetic import make_synthetic_archive
    from fxbench.errors import UsageError
    from fxbench.paths import demo_dir
    from fxbench.report import build_report
    from fxbench.select.tune import tune_run
    from fxbench.workflow import evaluate_run, train_run

    t0 = time.perf_counter()
    out_dir = out_dir or demo_dir()
    console.print(f"demo folder: {out_dir}", markup=False)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            raise UsageError(f"{out_dir} is not empty (an earlier demo?)",
                             "pass --force to start over, or --out another folder")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def step(text: str) -> None:
        console.print(f"[bold cyan]>[/] {text}  [dim]({time.perf_counter() - t0:.0f} s)[/]")

    archive = out_dir / "archive"
    step(f"fxbench synth {archive} --n-images {n_images} --seed {seed}")
    make_synthetic_archive(archive, n_images=n_images, seed=seed, scale=0.3)
    prep = out_dir / "prepared"
    step(f"fxbench prepare --archive {archive} --out {prep} --cache-size {image_size}")
    prepare(archive, prep, split_mode="grouped", seed=42, cache_sizes=(image_size,), cache_format="raw")
    run = out_dir / "runs" / "demo-unet-dual"
    sets = [f"data.prepared={prep}", f"data.image_size={image_size}", "model.name=unet_dual", "model.base_channels=16",
            f"train.epochs={epochs}", "train.batch_size=16", f"train.seed={seed}", "optim.lr=3e-3",
            "loss.presence_weight=0.3", "schedule.name=cosine", "schedule.warmup_epochs=1", "eval.bootstrap=1000",
            "runtime.device=cpu" if not _cuda() else "runtime.device=auto"]
    cfg = load_config(None, sets, environ={})
    step(f"fxbench train --run-dir {run} " + " ".join(f"--set {s}" for s in sets))
    from fxbench.cli.train_cmd import TrainDisplay

    with TrainDisplay(quiet=False) as display:
        train_run(cfg, run, on_progress=display)
    step(f"fxbench eval {run} --split val")
    evaluate_run(run, "val", argv=["eval", str(run), "--split", "val"])
    step(f"fxbench tune {run}")
    tuned = tune_run(run)
    d = tuned.decision
    console.print(f"  decision (chosen on val): threshold {d.threshold}, presence {d.presence_source} "
                  f">= {d.presence_threshold:.3f}", markup=False)
    from fxbench.cli.select_cmds import tuning_notes

    for line in tuning_notes(d.to_dict()):  # a 2-epoch demo model often ties or is degenerate: say so
        console.print(f"  {line}", markup=False)
    decision = run / "decision.json"
    step(f"fxbench eval {run} --split test --decision {decision}")
    metrics = evaluate_run(run, "test", decision_path=decision,
                           argv=["eval", str(run), "--split", "test", "--decision", str(decision)])
    report_dir = out_dir / "report"
    step(f"fxbench report {run} --out {report_dir}")
    build_report([run], report_dir)
    out.print(metrics_table(metrics, f"demo test results (sealed, {metrics.get('test_accesses')} test access)"))
    boxes = box_table(metrics, "demo test results")
    if boxes is not None:
        out.print(boxes)
    console.print(f"done in {time.perf_counter() - t0:.0f} s. Run folder: {run}", markup=False)
    console.print("On real data (README, 'The real-data workflow'): fxbench download "
                  "(offline: fxbench download --from-file FracAtlas.zip), then "
                  "fxbench prepare --split-mode seed --cache-size 256", markup=False)
    console.print(f"report with plots: {report_dir / 'report.md'}", markup=False)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
