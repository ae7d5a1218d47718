"""`fxbench predict`: masks, overlays and a table for new images."""

from __future__ import annotations

from pathlib import Path

import typer

from fxbench.cli.common import console, handle_errors
from fxbench.cli.misc_cmds import complete_run_path


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
    console.print(f"predicted {summary['predicted']} images -> {out}/predictions.csv, masks/, overlays/", markup=False)
    for err in summary["errors"]:
        console.print(f"skipped: {err['error']}", markup=False)
    if summary["errors"]:
        console.print(f"{len(summary['errors'])} unreadable files listed in {out}/errors.csv", markup=False)


def register(app: typer.Typer) -> None:
    app.command("predict")(predict)
