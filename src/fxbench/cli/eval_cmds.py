"""`fxbench eval`: predict a split once and score it; the test split is sealed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from fxbench.cli.common import console, handle_errors, out
from fxbench.cli.config_cmd import complete_split
from fxbench.runs import complete_run_path


def metrics_table(metrics: dict[str, Any], title: str):
    from rich.table import Table

    from fxbench.evaluate.bootstrap import HEADLINE_METRICS

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for key in HEADLINE_METRICS:
        if key not in metrics:
            continue
        val = metrics[key]
        ci = metrics.get(f"{key}_ci95")
        val_s = "nan" if val is None else f"{val:.4f}"
        ci_s = "" if not ci or None in ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
        table.add_row(key, val_s, ci_s)
    return table


def box_table(metrics: dict[str, Any], title: str):
    """The ``boxes`` section (COCO AP, FROC) as a table, or None when the metrics have none."""
    from rich.table import Table

    from fxbench.evaluate.boxes import box_rows

    rows = box_rows(metrics)
    if not rows:
        return None
    boxes = metrics["boxes"]
    table = Table(title=f"{title}: boxes ({boxes.get('n_gt_boxes')} GT, {boxes.get('n_pred_boxes')} predicted)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("95% CI", justify="right")
    for key, val, ci in rows:
        ci_s = "" if not ci or None in ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
        table.add_row(key, "nan" if val is None else f"{val:.4f}", ci_s)
    return table


@handle_errors
def eval_(
    run: Path | None = typer.Argument(None, help="Run folder (omit with --predictions).", autocompletion=complete_run_path),
    split: str = typer.Option("val", "--split", help="val or test (test needs --decision or --threshold).",
                              autocompletion=complete_split),
    tta: str | None = typer.Option(None, "--tta", help="none, h, v, hv or d4 (default: the decision's or config's)."),
    decision: Path | None = typer.Option(None, "--decision", help="decision.json from `fxbench tune` (the test split needs it, or --threshold)."),
    threshold: float | None = typer.Option(None, "--threshold", help="A user-fixed pixel threshold (recorded as such)."),
    which: str = typer.Option("best", "--which", help="Checkpoint: best or last."),
    prepared: Path | None = typer.Option(None, "--prepared", help="Prepared folder (default: the run's)."),
    resolution: str | None = typer.Option(None, "--resolution", help="cache (seed convention) or native."),
    bootstrap: int | None = typer.Option(None, "--bootstrap", help="Bootstrap resamples for CIs (default eval.bootstrap)."),
    predictions: Path | None = typer.Option(None, "--predictions", help="Score another tool's predictions (peer): a folder of mask PNGs or of YOLO txt, or a COCO results .json."),
    presence_csv: Path | None = typer.Option(None, "--presence-csv", help="Peer presence scores: image_id,score."),
    repredict: bool = typer.Option(False, "--repredict", help="Run the network again even if predictions exist."),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Peer folder for --predictions (default: <PREDICTIONS>.fxbench-peer; test accesses are logged there)."),
    frame: str = typer.Option("exif", "--frame", help="Boxes of YOLO txt / COCO JSON peers: exif (displayed frame, "
                              "as FracAtlas' own annotations and Ultralytics) or stored (raw JPEG grid)."),
    json_out: bool = typer.Option(False, "--json", help="Print the metrics JSON on stdout."),
) -> None:
    """Evaluate a run on val, or on test under a frozen decision (every test access is logged)."""
    from fxbench.errors import UsageError

    peer_dir: Path | None = None
    if predictions is not None:
        if prepared is None:
            raise UsageError("--predictions needs --prepared PREP (the prepared folder with the split)")
        from fxbench.cli.select_cmds import _command_line
        from fxbench.select.peer_boxes import detect_format, score_peer_boxes
        from fxbench.select.peers import default_peer_folder, score_mask_folder

        peer_dir = out_dir or default_peer_folder(predictions)
        fmt = detect_format(predictions)
        if fmt == "masks":
            metrics = score_mask_folder(predictions, prepared, split, presence_csv=presence_csv, out_dir=peer_dir,
                                        command=_command_line(), bootstrap=2000 if bootstrap is None else bootstrap)
        else:
            metrics = score_peer_boxes(predictions, prepared, split, out_dir=peer_dir, frame=frame, fmt=fmt,
                                       bootstrap=2000 if bootstrap is None else bootstrap, command=_command_line())
        title = f"peer predictions {predictions} ({fmt}) on {split}"
    else:
        if run is None:
            raise UsageError("give a RUN folder, or --predictions DIR --prepared PREP")
        from fxbench.workflow import evaluate_run

        metrics = evaluate_run(run, split, tta=tta, decision_path=decision, threshold=threshold, which=which,
                               prepared=prepared, resolution=resolution, bootstrap=bootstrap, repredict=repredict)
        title = f"{run.name} on {split} (tta {metrics.get('tta')}, threshold {metrics.get('threshold')})"
    if json_out:
        out.print(json.dumps(metrics, default=str), markup=False)
    console.print(metrics_table(metrics, title))
    boxes = box_table(metrics, title)
    if boxes is not None:
        console.print(boxes)
    if split == "test":
        what = "this run" if run is not None and predictions is None else f"peer folder {peer_dir} (kind peer)"
        console.print(access_line(metrics, what), markup=False)
        folder = run if run is not None and predictions is None else peer_dir
        console.print(f"wrote {folder}/metrics/test.json; next: fxbench report {folder} --out report", markup=False)
    elif run is not None and predictions is None:
        console.print(f"wrote {run}/metrics/{split}.json; next: fxbench tune {run}", markup=False)
    else:
        console.print(f"wrote {peer_dir}/metrics/{split}.json", markup=False)


def access_line(metrics: dict[str, Any], what: str) -> str:
    """One line: the test accesses of ``what`` and, when it is built from runs, their maximum."""
    line = f"test accesses for {what}: {metrics.get('test_accesses')}"
    if metrics.get("decision_source") == "user-fixed":
        line += " (user-fixed operating point, not chosen on val)"
    if metrics.get("member_test_accesses"):
        line += f"; max over the runs it is built from: {metrics.get('max_test_accesses')}"
    return line


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
