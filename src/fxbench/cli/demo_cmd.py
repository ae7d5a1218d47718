"""`fxbench demo`: the whole protocol on a generated FracAtlas-layout archive, in about a minute.

synth -> prepare -> train (small unet_dual) -> eval val -> tune (val) -> eval test (sealed,
once) -> report. Everything lands in one folder, and the commands that reproduce each step
are printed, so the demo doubles as a tour of the real workflow.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
    from fxbench.cli.select_cmds import tuning_notes
    from fxbench.cli.train_cmd import TrainDisplay
    from fxbench.errors import UsageError
    from fxbench.paths import demo_dir
    from fxbench.workflow import run_demo

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

    def tuned(d: Any) -> None:
        console.print(f"  decision (chosen on val): threshold {d.threshold}, presence {d.presence_source} "
                      f">= {d.presence_threshold:.3f}", markup=False)
        for line in tuning_notes(d.to_dict()):  # a 2-epoch demo model often ties or is degenerate: say so
            console.print(f"  {line}", markup=False)

    result = run_demo(out_dir, n_images, epochs, image_size, seed, "auto" if _cuda() else "cpu", step,
                      lambda: TrainDisplay(quiet=False), tuned)
    metrics = result.metrics
    out.print(metrics_table(metrics, f"demo test results (sealed, {metrics.get('test_accesses')} test access)"))
    boxes = box_table(metrics, "demo test results")
    if boxes is not None:
        out.print(boxes)
    console.print(f"done in {time.perf_counter() - t0:.0f} s. Run folder: {result.run}", markup=False)
    console.print("On real data (README, 'The real-data workflow'): fxbench download "
                  "(offline: fxbench download --from-file FracAtlas.zip), then "
                  "fxbench prepare --split-mode seed --cache-size 256", markup=False)
    console.print(f"report with plots: {result.report_dir / 'report.md'}", markup=False)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
