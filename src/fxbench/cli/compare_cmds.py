"""`fxbench compare` (paired tests of result folders) and `fxbench cv` (pool fold runs)."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from fxbench.cli.common import console, handle_errors, out, verb_settings
from fxbench.runs import complete_run_path


def _command() -> str:
    return "fxbench " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _f(v: float | None, digits: int = 4) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _p(v: float | None) -> str:
    if v is None:
        return "-"
    return "<1e-4" if v < 1e-4 else f"{v:.4f}"


def compare_folders_meta(folders: list[Path], split: str) -> dict[str, Any]:
    """The first folder's predictions meta (which prepared folder it names), without the arrays."""
    from fxbench.report.leaderboard import read_predictions_meta

    return read_predictions_meta(Path(folders[0]) / "predictions" / f"{split}.npz")


def compare_table(result: dict[str, Any]) -> Any:
    """Rich table: one row per comparison and metric, then DeLong and McNemar rows."""
    from rich.table import Table

    holm = len(result["comparisons"]) > 1
    table = Table(title=f"compare on {result['split']} ({result['n']} images, {result['num_positive']} positive); "
                        f"differences B - A, A = {result['reference']}")
    cols = ["B", "metric", "A", "B value", "B - A", "95% CI", "p"] + (["p (Holm)"] if holm else [])
    for c in cols:
        table.add_column(c, justify="left" if c in ("B", "metric") else "right")
    for comp in result["comparisons"]:
        for name, r in comp["metrics"].items():
            ci = r["delta_ci95"]
            mark = " *" if r.get("worse") else ""
            row = [comp["b"], name, _f(r["a"]), _f(r["b"]), _f(r["delta"]) + mark,
                   "-" if None in ci else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]", _p(r["p_value"])]
            table.add_row(*row, *([_p(r.get("p_holm"))] if holm else []))
        d = comp["delong"]
        ci = d["delta_ci95"]
        table.add_row(comp["b"], "AUC (DeLong)", _f(d["auc_a"]), _f(d["auc_b"]), _f(d["delta"]) + (" *" if d.get("worse") else ""),
                      "-" if None in ci else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]", _p(d["p_value"]),
                      *([_p(d.get("p_holm"))] if holm else []))
        for name, r in (comp.get("boxes") or {}).items():
            ci = r["delta_ci95"]
            table.add_row(comp["b"], name, _f(r["a"]), _f(r["b"]), _f(r["delta"]) + (" *" if r.get("worse") else ""),
                          "-" if None in ci else f"[{ci[0]:+.4f}, {ci[1]:+.4f}]", _p(r["p_value"]),
                          *([_p(r.get("p_holm"))] if holm else []))
        m = comp["mcnemar"]
        table.add_row(comp["b"], "presence accuracy (McNemar)", _f(m["accuracy_a"]), _f(m["accuracy_b"]),
                      _f(m["delta"]) + (" *" if m.get("worse") else ""),
                      f"{m['a_only_correct']} vs {m['b_only_correct']} discordant", _p(m["p_value"]),
                      *([_p(m.get("p_holm"))] if holm else []), end_section=True)
    return table


@handle_errors
def compare(
    folders: list[Path] = typer.Argument(..., help="Two or more result folders (run, ensemble, blend, cv pool); the first is A.",
                                         autocompletion=complete_run_path),
    split: str = typer.Option("val", "--split", help="val (as saved) or test (sealed test artifacts only; logged as a test access of each)."),
    bootstrap: int | None = typer.Option(None, "--bootstrap", min=1, help="Paired bootstrap resamples (= eval.bootstrap)."),
    seed: int | None = typer.Option(None, "--seed", help="Bootstrap seed (= eval.bootstrap_seed)."),
    boxes: bool = typer.Option(False, "--boxes", help="Also compare box metrics (AP50, AP50:95, FROC) against PREP/boxes.json."),
    box_bootstrap: int = typer.Option(500, "--box-bootstrap", min=1, help="Paired resamples for the box metrics (pycocotools per resample)."),
    out_path: Path | None = typer.Option(None, "--out", help="Write the comparison as JSON to this file."),
    json_out: bool = typer.Option(False, "--json", help="Print the comparison as JSON on stdout."),
) -> None:
    """Paired comparison of saved predictions: B - A with CIs and p-values, DeLong, McNemar, Holm."""
    from fxbench.errors import DataError, UsageError
    from fxbench.io import write_json_atomic
    from fxbench.select.compare import compare_inputs
    from fxbench.select.sealed import compare_folders

    if len(folders) < 2:
        raise UsageError("compare needs at least two folders", "e.g. fxbench compare runs/a runs/b --split val")
    gt_boxes = None
    if boxes:
        from fxbench.data.boxes import gt_boxes_of

        gt_boxes = gt_boxes_of(compare_folders_meta(folders, split))
        if gt_boxes is None:
            raise DataError("--boxes: the prepared folder of the predictions has no boxes.json (or is not here)",
                            "re-run `fxbench prepare` on it (it writes PREP/boxes.json), or drop --boxes")
    ev = verb_settings(None, None, **{"eval.bootstrap": bootstrap, "eval.bootstrap_seed": seed}).eval
    inputs = compare_folders(folders, split, _command())
    result = compare_inputs(inputs, n_resamples=ev.bootstrap, seed=ev.bootstrap_seed, gt_boxes=gt_boxes,
                            box_resamples=box_bootstrap)
    if out_path is not None:
        write_json_atomic(out_path, result)
    if json_out:
        out.print(json.dumps(result), markup=False)
    console.print(compare_table(result))
    console.print("* = significantly worse than A (two-sided p" + (" after Holm" if len(folders) > 2 else "")
                  + f" < {result['method']['alpha']}); definitions: docs/metrics.md", markup=False)
    if split == "test":
        console.print(f"logged as a test access of each of the {len(folders)} folders", markup=False)
    if out_path is not None:
        console.print(f"wrote {out_path}", markup=False)


@handle_errors
def cv(
    runs: list[Path] = typer.Argument(..., help="The K fold runs (e.g. runs/NAME-cv/fold_*), each tested once on its fold.",
                                      autocompletion=complete_run_path),
    out_dir: Path | None = typer.Option(None, "--out", help="Pool folder (default: <runs' parent>/pooled)."),
    bootstrap: int | None = typer.Option(None, "--bootstrap", min=0, help="Bootstrap resamples for the pooled CIs, 0 = off (= eval.bootstrap)."),
    seed: int | None = typer.Option(None, "--seed", help="Bootstrap seed (= eval.bootstrap_seed)."),
    json_out: bool = typer.Option(False, "--json", help="Print the pooled metrics as JSON on stdout."),
) -> None:
    """Pool out-of-fold test predictions of K fold runs into one artifact and score it (with per-fold mean, SD)."""
    from rich.table import Table

    from fxbench.evaluate import HEADLINE_METRICS
    from fxbench.select.cv import run_cv

    target = out_dir or Path(runs[0]).parent / "pooled"
    ev = verb_settings(None, None, **{"eval.bootstrap": bootstrap, "eval.bootstrap_seed": seed}).eval
    res = run_cv(runs, target, _command(), bootstrap=ev.bootstrap, seed=ev.bootstrap_seed)
    pooled, per_fold = res["pooled"], res["per_fold"]
    if json_out:
        out.print(json.dumps({"pooled": pooled, "per_fold": per_fold, "folds": res["folds"]}, default=str), markup=False)
    table = Table(title=f"cross-validation: {len(runs)} folds pooled over {pooled.get('n')} images "
                        f"({pooled.get('num_positive')} positive)")
    for c in ("metric", "pooled", "pooled 95% CI", "per-fold mean", "per-fold SD", "per fold"):
        table.add_column(c, justify="left" if c == "metric" else "right")
    for m in HEADLINE_METRICS:
        if m not in pooled:
            continue
        ci = pooled.get(f"{m}_ci95")
        pf = per_fold.get(m, {})
        table.add_row(m, _f(pooled[m]), "" if not ci or None in ci else f"[{ci[0]:.4f}, {ci[1]:.4f}]",
                      _f(pf.get("mean")), _f(pf.get("sd")), " ".join(_f(v, 3) for v in pf.get("values", [])))
    console.print(table)
    console.print("pooled AUC/AP rank the scores of K models, each with its own calibration: read them beside the "
                  "per-fold mean and SD", markup=False)
    console.print(f"wrote {target}/metrics/test.json and {target}/cv_pool.json; compare it with another pool: "
                  f"fxbench compare {target} OTHER-cv/pooled --split test", markup=False)


def register(app: typer.Typer) -> None:
    app.command("compare")(compare)
    app.command("cv")(cv)
