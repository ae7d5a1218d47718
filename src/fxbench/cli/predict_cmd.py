"""`fxbench predict`: masks, overlays and a table for new images."""

from __future__ import annotations

from pathlib import Path

import typer

from fxbench.cli.common import console, handle_errors
from fxbench.runs import complete_run_path


@handle_errors
def predict(
    run: Path = typer.Argument(..., help="Trained run folder.", autocompletion=complete_run_path),
    inputs: list[Path] = typer.Argument(..., help="Image files or folders (PNG, JPEG, TIFF, BMP, DICOM; folders recursed)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    decision: Path | None = typer.Option(None, "--decision", help="decision.json (default: RUN/decision.json if present)."),
    tta: str | None = typer.Option(None, "--tta", help="none, h, v, hv, d4 (default: the decision's)."),
    which: str = typer.Option("best", "--which", help="Checkpoint: best or last."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Predict fracture masks and presence for your own images."""
    from rich.progress import Progress

    from fxbench.predict.new_images import predict_images

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("predicting", total=None)

        def tick(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        summary = predict_images(run, inputs, out, decision_path=decision, tta=tta, which=which, device=device,
                                 on_progress=tick)
    n = summary["predicted"]
    console.print(f"predicted {n} image{'s' if n != 1 else ''} ({summary['positive']} with a fracture call) -> "
                  f"{out}/predictions.csv, masks/, overlays/", markup=False)
    console.print(f"rule: fracture when presence ({summary['presence_source']}) >= {summary['presence_threshold']:.4g}; "
                  f"masks (pixels >= {summary['threshold']:.4g}) are kept for those images only", markup=False)
    for err in summary["errors"]:
        console.print(f"skipped: {err['error']}", markup=False)
    if summary["errors"]:
        k = len(summary["errors"])
        console.print(f"{k} unreadable file{'s' if k != 1 else ''} listed in {out}/errors.csv", markup=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
