"""`fxbench report` (leaderboard + plots) and `fxbench export nnunet|yolo` (a peer's dataset)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fxbench.cli.common import console, handle_errors, out

export_app = typer.Typer(help="Export data for other tools (nnU-Net, Ultralytics YOLO).", no_args_is_help=True)


@handle_errors
def report(
    paths: list[Path] = typer.Argument(..., help="Run, ensemble or blend folders, or folders of them (e.g. runs/)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for leaderboard.md/json, report.md and plots."),
    prepared: Path | None = typer.Option(None, "--prepared", help="Prepared folder for overlay images (default: each run's)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Draw PNG plots."),
    cases: int = typer.Option(8, "--cases", min=1, max=32, help="Best and worst cases per overlay grid."),
    json_out: bool = typer.Option(False, "--json", help="Print the leaderboard rows as JSON on stdout."),
    significance: bool = typer.Option(False, "--significance", help="Mark rows significantly worse than the best row of their split (paired tests, Holm; on test rows a logged test access of each)."),
) -> None:
    """Leaderboard (dice_pos, AUC, AP with CIs; split, TTA, decision, test accesses) and plots."""
    import shlex
    import sys

    from rich.table import Table

    from fxbench.report import build_report

    summary = build_report(paths, out_dir, prepared=prepared, plots=plots, cases=cases, significance=significance,
                           command="fxbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    rows = summary["rows"]
    if json_out:
        out.print(json.dumps(rows, default=str), markup=False)
    table = Table(title=f"leaderboard ({len(rows)} {'entry' if len(rows) == 1 else 'entries'})")
    numeric = ("#", "dice_pos", "AUC", "AP", "test acc.", "max acc.")
    for col in ("#", "name", "kind", "split", "dice_pos", "AUC", "AP", "decision", "test acc.", "max acc."):
        table.add_column(col, justify="right" if col in numeric else "left")

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    for i, r in enumerate(rows, start=1):
        worse = r.get("worse_than_best") or ()
        cells = [f(r[k]) + (" ↓" if k in worse else "") for k in ("dice_pos", "roc_auc_presence", "average_precision_presence")]
        table.add_row(str(i), r["name"], r["kind"], r["split"] or "-", *cells,
                      str(r["decision_source"] or "-"), str(r["test_accesses"]), str(r["max_test_accesses"]))
    console.print(table)
    for note in summary.get("notes", []):
        console.print(note, markup=False)
    if any(r.get("worse_than_best") for r in rows):
        console.print("↓ = significantly worse than the best row of its split (paired bootstrap, Holm p < 0.05)", markup=False)
    console.print(f"wrote {out_dir / 'leaderboard.md'}, {out_dir / 'report.md'}" + (" and plots" if plots else ""),
                  markup=False)
    no_metrics = [r for r in rows if r["split"] is None]
    val_only = [r for r in rows if r["split"] == "val"]
    if no_metrics:
        ex = no_metrics[0]["path"]
        console.print(f"{len(no_metrics)} of them have no metrics yet; next (e.g. {no_metrics[0]['name']}): "
                      f"fxbench eval {ex} --split val", markup=False)
    if val_only:
        ex = val_only[0]["path"]
        console.print(f"{len(val_only)} of them show val only; next (e.g. {val_only[0]['name']}): fxbench tune {ex}, "
                      f"then fxbench eval {ex} --split test --decision {Path(ex) / 'decision.json'}", markup=False)
    if not no_metrics and not val_only:
        console.print(f"next: open {out_dir / 'report.md'}", markup=False)


def _with_progress(export: Any, *args: Any, **kwargs: Any) -> Any:
    """Run an exporter with a transient progress bar (it calls ``progress(done, total)``)."""
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("exporting", total=None)

        def tick(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return export(*args, progress=tick, **kwargs)


@export_app.command("nnunet")
@handle_errors
def export_nnunet_cmd(
    prepared: Path = typer.Argument(..., help="Prepared folder (output of `fxbench prepare`)."),
    out_dir: Path = typer.Argument(..., help="nnU-Net raw folder (nnUNet_raw) to write Dataset<id>_<name> into."),
    dataset_id: int = typer.Option(501, "--dataset-id", help="nnU-Net dataset id (500-999)."),
    name: str = typer.Option("FracAtlas", "--name", help="Dataset name (alphanumeric)."),
    test_labels: bool = typer.Option(False, "--test-labels", help="Also write labelsTs (off: test stays sealed)."),
    archive: Path | None = typer.Option(None, "--archive", help="FracAtlas zip/folder if images are not next to PREP."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export."),
) -> None:
    """Write an nnU-Net v2 raw dataset whose fold 0 is fxbench's train/val split."""
    from fxbench.select.peers import export_nnunet, nnunet_commands

    root = _with_progress(export_nnunet, prepared, out_dir, dataset_id=dataset_id, name=name, test_labels=test_labels,
                          archive=archive, overwrite=force)
    console.print(f"wrote {root} (imagesTr/labelsTr = train+val, imagesTs = test, splits_final.json = our split)",
                  markup=False)
    console.print("next:", markup=False)
    for line in nnunet_commands(root):
        console.print(f"  {line.replace('PREP', str(prepared))}", markup=False)


@export_app.command("yolo")
@handle_errors
def export_yolo_cmd(
    prepared: Path = typer.Argument(..., help="Prepared folder (output of `fxbench prepare`)."),
    out_dir: Path = typer.Argument(..., help="Folder for the Ultralytics dataset (images/, labels/, data.yaml)."),
    test_labels: bool = typer.Option(False, "--test-labels", help="Also write labels/test (off: test stays sealed)."),
    archive: Path | None = typer.Option(None, "--archive", help="FracAtlas zip/folder if images are not next to PREP."),
    force: bool = typer.Option(False, "--force", help="Replace an existing export."),
) -> None:
    """Write an Ultralytics YOLO detection dataset (one class) with fxbench's train/val/test split."""
    from fxbench.select.export_yolo import export_yolo, yolo_commands

    yaml_path = _with_progress(export_yolo, prepared, out_dir, test_labels=test_labels, archive=archive, overwrite=force)
    console.print(f"wrote {yaml_path} (images/ and labels/ per split; labels/test "
                  f"{'written' if test_labels else 'withheld'})", markup=False)
    console.print("next:", markup=False)
    for line in yolo_commands(yaml_path, prepared):
        console.print(f"  {line}", markup=False)


def register(app: typer.Typer) -> None:
    """Add report and the export group to ``app``."""
    app.command("report")(report)
    app.add_typer(export_app, name="export")
