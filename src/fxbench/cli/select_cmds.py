"""`fxbench tune | ensemble | blend`: choices on val from saved predictions, test once.

These verbs read ``RUN/predictions/<split>.npz``. When a run lacks them, the network is run
once by ``fxbench.workflow.ensure_predictions`` (torch is imported only then: it stays out of
``--help`` and out of runs that already have their predictions).
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

import typer

from fxbench.cli.common import console, handle_errors, out, verb_settings
from fxbench.runs import complete_run_path

_TUNE_METRICS = "dice_pos, iou_pos, dice, iou or auc_plus_dice_pos"


def _command_line() -> str:
    return "fxbench " + shlex.join(sys.argv[1:])


def _ensure_predictions(run: Path, split: str, tta: str | None) -> None:
    """RUN/predictions/<split>.npz, made first by the run's network when missing (said on screen)."""
    from fxbench.workflow import ensure_predictions

    ensure_predictions(run, split, tta, on_predict=lambda: console.print(
        f"predicting {split} for {run} (tta {tta or 'from config'})", markup=False))


def _grid(sel: Any) -> Any:
    from fxbench.select.tune import threshold_grid

    return threshold_grid(sel.threshold_start, sel.threshold_stop, sel.threshold_step)


_CONFIG_HELP = "YAML config whose select/eval sections set the search (default: the schema's)."
_SET_HELP = "Override: select.key=value or eval.bootstrap=N (repeatable); the flags below are shortcuts."


def _fmt(v: Any, nd: int = 4) -> str:
    if v is None:
        return "-"
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return "nan" if f != f else f"{f:.{nd}f}"


def _metrics_rows(table: Any, label: str, metrics: dict[str, Any] | None) -> None:
    if not metrics:
        return
    for key in ("dice_pos", "iou_pos", "roc_auc_presence", "average_precision_presence"):
        ci = metrics.get(f"{key}_ci95")
        ci_s = f"[{_fmt(ci[0])}, {_fmt(ci[1])}]" if isinstance(ci, list) and None not in ci else ""
        table.add_row(label, key, _fmt(metrics.get(key)), ci_s)


def _result_table(title: str, val: dict[str, Any] | None, test: dict[str, Any] | None) -> Any:
    from rich.table import Table

    table = Table(title=title)
    for col, just in (("split", "left"), ("metric", "left"), ("value", "right"), ("95% CI", "right")):
        table.add_column(col, justify=just)  # type: ignore[arg-type]
    _metrics_rows(table, "val", val)
    _metrics_rows(table, "test (once)", test)
    return table


# --------------------------------------------------------------------------------------
# tune


@handle_errors
def tune(
    run: Path = typer.Argument(
        ..., help="Run folder (with predictions/val.npz, or a checkpoint to make it).", autocompletion=complete_run_path
    ),
    split: str = typer.Option("val", "--split", help="Always val: tuning on test is refused (exit 4)."),
    metric: str | None = typer.Option(None, "--metric", help=f"Selection metric: {_TUNE_METRICS} (= select.metric)."),
    min_component: list[int] | None = typer.Option(
        None, "--min-component", help="Minimum predicted component sizes to try (repeatable; 0 = off)."
    ),
    presence_rule: str | None = typer.Option(None, "--presence-rule", help="Presence threshold rule on val: f1 or youden (= select.presence_rule)."),
    presence_source: list[str] | None = typer.Option(
        None, "--presence-source", help="Restrict presence sources (repeatable; default: all in the artifact)."
    ),
    start: float | None = typer.Option(None, "--start", help="Pixel threshold grid start (= select.threshold_start)."),
    stop: float | None = typer.Option(None, "--stop", help="Pixel threshold grid stop, inclusive (= select.threshold_stop)."),
    step: float | None = typer.Option(None, "--step", help="Pixel threshold grid step (= select.threshold_step)."),
    tta: str | None = typer.Option(None, "--tta", help="TTA if val must be predicted first (default: the run's)."),
    config: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=_SET_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print the decision JSON on stdout."),
) -> None:
    """Choose threshold, presence source and presence threshold on val; write RUN/decision.json."""
    from rich.table import Table

    from fxbench.errors import ProtocolError
    from fxbench.select.tune import tune_run

    if split != "val":
        raise ProtocolError(
            f"tune chooses on val only, not '{split}': the test split is sealed",
            f"run `fxbench tune {run}`, then `fxbench eval {run} --split test --decision {run / 'decision.json'}`",
        )
    sel = verb_settings(config, set_, **{
        "select.metric": metric, "select.presence_rule": presence_rule, "select.threshold_start": start,
        "select.threshold_stop": stop, "select.threshold_step": step, "select.min_components": min_component,
    }).select
    _ensure_predictions(run, "val", tta)
    result = tune_run(
        run, "val", metric=sel.metric, thresholds=_grid(sel),
        min_components=sel.min_components, presence_sources=presence_source or None, presence_rule=sel.presence_rule,
    )
    d = result.decision
    if json_out:
        out.print(json.dumps(d.to_dict()), markup=False)
    grid = Table(title=f"{run.name}: val {sel.metric} by pixel threshold (top 5)")
    for col in ("threshold", "min_component", "dice_pos", "iou_pos", "dice", "recall_pos"):
        grid.add_column(col, justify="right")
    key = "dice_pos" if sel.metric == "auc_plus_dice_pos" else sel.metric
    top = sorted(result.grid, key=lambda r: -(r[key] if r[key] == r[key] else -1.0))[:5]
    for r in top:
        grid.add_row(_fmt(r["threshold"], 2), str(r["min_component"]), *(_fmt(r[k]) for k in ("dice_pos", "iou_pos", "dice", "recall_pos")))
    console.print(grid)
    pres = Table(title="presence sources on val")
    for col in ("source", "AUC", "AP", f"threshold ({sel.presence_rule})"):
        pres.add_column(col, justify="right")
    for r in result.presence:
        mark = " *" if r["presence_source"] == d.presence_source else ""
        pres.add_row(r["presence_source"] + mark, _fmt(r["roc_auc_presence"]), _fmt(r["average_precision_presence"]),
                     _fmt(r["presence_threshold"]))
    console.print(pres)
    console.print(
        f"decision (val): threshold {d.threshold:g}, min_component {d.min_component}, presence {d.presence_source} "
        f">= {d.presence_threshold:.4f}; wrote {run / 'decision.json'}",
        markup=False,
    )
    for line in tuning_notes(d.to_dict()):
        console.print(line, markup=False)
    console.print(f"next: fxbench eval {run} --split test --decision {run / 'decision.json'}", markup=False)


def tuning_notes(decision: dict[str, Any]) -> list[str]:
    """Warnings about ties and degenerate tuning recorded in a decision (empty when none)."""
    lines = []
    ties = decision.get("ties") or []
    if len(ties) > 1:
        shown = ", ".join(f"{t['threshold']:g}" + (f"/mc{t['min_component']}" if t.get("min_component") else "")
                          for t in ties[:8])
        more = f" (+{len(ties) - 8} more)" if len(ties) > 8 else ""
        lines.append(f"warning: tie: {len(ties)} grid points share the best val score ({shown}{more}); "
                     "the first in grid order was taken")
    for reason in decision.get("degenerate") or []:
        lines.append(f"warning: degenerate tuning: {reason}")
    return lines


# --------------------------------------------------------------------------------------
# ensemble


@handle_errors
def ensemble(
    runs: list[Path] = typer.Argument(
        ..., help="Two or more run folders predicting the same split.", autocompletion=complete_run_path
    ),
    out_dir: Path = typer.Option(..., "--out", help="New folder for the ensemble (run layout)."),
    metric: str | None = typer.Option(None, "--metric", help=f"Selection metric on val: {_TUNE_METRICS} (= select.metric)."),
    min_component: list[int] | None = typer.Option(None, "--min-component", help="Min component sizes to try (= select.min_components)."),
    presence_rule: str | None = typer.Option(None, "--presence-rule", help="Presence threshold rule on val: f1 or youden (= select.presence_rule)."),
    start: float | None = typer.Option(None, "--start", help="Pixel threshold grid start (= select.threshold_start)."),
    stop: float | None = typer.Option(None, "--stop", help="Pixel threshold grid stop (= select.threshold_stop)."),
    step: float | None = typer.Option(None, "--step", help="Pixel threshold grid step (= select.threshold_step)."),
    bootstrap: int | None = typer.Option(None, "--bootstrap", help="Bootstrap resamples for CIs, 0 = off (= eval.bootstrap)."),
    seed: int | None = typer.Option(None, "--seed", help="Bootstrap seed (= eval.bootstrap_seed)."),
    config: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=_SET_HELP),
    tta: str | None = typer.Option(None, "--tta", help="TTA for members that must be predicted (default: each run's)."),
    test: bool = typer.Option(True, "--test/--no-test", help="Evaluate test once with the frozen decision."),
    weights: str | None = typer.Option(
        None, "--weights", help="Fixed member weights, comma-separated in the runs' order (normalised), e.g. 0.5,0.3,0.2."
    ),
    weight_step: float | None = typer.Option(
        None, "--weight-step", help="Choose the weights on val over the simplex grid of this step (e.g. 0.25)."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print the summary JSON on stdout."),
) -> None:
    """Average N runs' probability maps and presence scores (optionally weighted); choose on val; test once."""
    from fxbench.errors import UsageError
    from fxbench.select.ensemble import run_ensemble

    if len(runs) < 2:
        raise UsageError("an ensemble needs at least two runs")
    fixed = None
    if weights is not None:
        try:
            fixed = [float(v) for v in weights.split(",") if v.strip()]
        except ValueError as err:
            raise UsageError(f"--weights {weights!r} is not a comma-separated list of numbers", "e.g. --weights 0.5,0.5") from err
    cfg = verb_settings(config, set_, **{
        "select.metric": metric, "select.presence_rule": presence_rule, "select.threshold_start": start,
        "select.threshold_stop": stop, "select.threshold_step": step, "select.min_components": min_component,
        "eval.bootstrap": bootstrap, "eval.bootstrap_seed": seed,
    })
    sel = cfg.select
    for run in runs:
        _ensure_predictions(run, "val", tta)
        if test:
            _ensure_predictions(run, "test", tta)
    summary = run_ensemble(
        runs, out_dir, metric=sel.metric, thresholds=_grid(sel), min_components=sel.min_components,
        presence_rule=sel.presence_rule, bootstrap=cfg.eval.bootstrap, seed=cfg.eval.bootstrap_seed, test=test,
        command=_command_line(),
        weights=fixed, weight_step=weight_step,
    )
    _finish(summary, out_dir, runs, json_out, f"ensemble of {len(runs)} runs -> {out_dir}")


def _finish(summary: dict[str, Any], out_dir: Path, inputs: list[Path], json_out: bool, title: str) -> None:
    d = summary["decision"]
    if json_out:
        slim = {k: v for k, v in summary.items() if k not in ("tune", "best")}
        out.print(json.dumps(slim, default=str), markup=False)
    console.print(_result_table(title, summary["val"], summary["test"]))
    weights = ", ".join(f"{k} {d[k]:g}" for k in ("alpha", "beta", "gamma") if d.get(k) is not None)
    if isinstance(d.get("weights"), dict) and d.get("weight_rule") != "equal":
        weights = "weights " + " ".join(f"{k}={v:g}" for k, v in d["weights"].items()) + f" ({d.get('weight_rule')})"
    console.print(
        f"frozen on val: threshold {d['threshold']:g}, presence {d['presence_source']} >= {d['presence_threshold']:.4f}"
        + (f", {weights}" if weights else ""),
        markup=False,
    )
    for line in tuning_notes(d):
        console.print(line, markup=False)
    if summary["test"] is None:
        console.print(f"test not evaluated (--no-test); decision in {out_dir / 'decision.json'}", markup=False)
    else:
        from fxbench.cli.eval_cmds import access_line

        console.print(access_line(summary["test"], str(out_dir)), markup=False)
    report_dir = out_dir.parent / "report"
    console.print(
        f"next: fxbench report {out_dir} {' '.join(shlex.quote(str(r)) for r in inputs)} --out {report_dir}", markup=False
    )


# --------------------------------------------------------------------------------------
# blend


@handle_errors
def blend(
    run_a: Path = typer.Argument(..., help="Run A (the seed's dual-head model).", autocompletion=complete_run_path),
    run_b: Path = typer.Argument(..., help="Run B.", autocompletion=complete_run_path),
    out_dir: Path = typer.Option(..., "--out", help="New folder for the blend (run layout)."),
    classifier: Path | None = typer.Option(None, "--classifier", help="A presence classifier run for three-way fusion (gamma)."),
    rule: str | None = typer.Option(None, "--rule", help="best_auc, best_dice_pos or best_joint, AUC + dice_pos (= select.blend_rule)."),
    alpha_step: float | None = typer.Option(None, "--alpha-step", help="Mask weight grid step over [0, 1] (= select.alpha_step)."),
    beta_step: float | None = typer.Option(None, "--beta-step", help="Presence weight grid step over [0, 1] (= select.beta_step)."),
    gamma_step: float | None = typer.Option(None, "--gamma-step", help="Classifier fusion grid step over [0, 1] (= select.gamma_step)."),
    start: float | None = typer.Option(None, "--start", help="Pixel threshold grid start (= select.threshold_start)."),
    stop: float | None = typer.Option(None, "--stop", help="Pixel threshold grid stop (= select.threshold_stop)."),
    step: float | None = typer.Option(None, "--step", help="Pixel threshold grid step (= select.threshold_step)."),
    presence_a: str | None = typer.Option(None, "--presence-a", help="A's presence source, auto = head else max (= select.presence_a)."),
    presence_b: str | None = typer.Option(None, "--presence-b", help="B's presence source, the seed: max (= select.presence_b)."),
    presence_classifier: str | None = typer.Option(None, "--presence-classifier", help="Classifier's presence source (= select.presence_classifier)."),
    presence_rule: str | None = typer.Option(None, "--presence-rule", help="Presence threshold rule on val: f1 or youden (= select.presence_rule)."),
    bootstrap: int | None = typer.Option(None, "--bootstrap", help="Bootstrap resamples for CIs, 0 = off (= eval.bootstrap)."),
    seed: int | None = typer.Option(None, "--seed", help="Bootstrap seed (= eval.bootstrap_seed)."),
    config: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    set_: list[str] | None = typer.Option(None, "--set", "-s", help=_SET_HELP),
    tta: str | None = typer.Option(None, "--tta", help="TTA for members that must be predicted."),
    test: bool = typer.Option(True, "--test/--no-test", help="Evaluate test once with the frozen decision."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary JSON on stdout."),
) -> None:
    """Blend two runs (alpha masks, beta presence) and optionally a classifier (gamma), on probabilities."""
    from fxbench.select.blend import run_blend
    from fxbench.select.tune import unit_grid

    cfg = verb_settings(config, set_, **{
        "select.blend_rule": rule, "select.alpha_step": alpha_step, "select.beta_step": beta_step,
        "select.gamma_step": gamma_step, "select.threshold_start": start, "select.threshold_stop": stop,
        "select.threshold_step": step, "select.presence_a": presence_a, "select.presence_b": presence_b,
        "select.presence_classifier": presence_classifier, "select.presence_rule": presence_rule,
        "eval.bootstrap": bootstrap, "eval.bootstrap_seed": seed,
    })
    sel = cfg.select
    members = [run_a, run_b] + ([classifier] if classifier is not None else [])
    for run in members:
        _ensure_predictions(run, "val", tta)
        if test:
            _ensure_predictions(run, "test", tta)
    summary = run_blend(
        run_a, run_b, out_dir, classifier, rule=sel.blend_rule, alphas=list(unit_grid(sel.alpha_step)),
        betas=list(unit_grid(sel.beta_step)), gammas=list(unit_grid(sel.gamma_step)) if classifier is not None else [1.0],
        thresholds=_grid(sel), presence_a=sel.presence_a, presence_b=sel.presence_b,
        presence_classifier=sel.presence_classifier, presence_rule=sel.presence_rule,
        bootstrap=cfg.eval.bootstrap, seed=cfg.eval.bootstrap_seed, test=test, command=_command_line(),
    )
    console.print(f"searched {summary['num_rows']} grid rows on val; full grid in {out_dir / 'grid.csv'}", markup=False)
    _finish(summary, out_dir, members, json_out, f"blend ({sel.blend_rule}) -> {out_dir}")


def register(app: typer.Typer) -> None:
    """Add tune, ensemble and blend to ``app``."""
    app.command("tune")(tune)
    app.command("ensemble")(ensemble)
    app.command("blend")(blend)
