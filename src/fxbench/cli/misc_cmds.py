"""Everyday verbs that need no trained model: `doctor`, `runs`, `show`, `models`.

Each verb parses, calls one core function (:mod:`fxbench.doctor`, :mod:`fxbench.runs`, the
model registry) and renders. Module level imports only typer, rich and light fxbench modules:
`fxbench --help` and tab completion load this file and must stay fast.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fxbench.cli.common import console, handle_errors, out
from fxbench.errors import FxbenchError, UsageError
from fxbench.runs import (
    complete_run_dir,
    describe_run,
    find_runs,
    is_run_dir,
    read_yaml_lenient,
    resolve_run,
    subdirs,
    summarize_run,
)


def _echo_json(obj: Any) -> None:
    """Machine output: plain JSON on stdout (no Rich markup or colour)."""
    from fxbench.io import dumps_json

    typer.echo(dumps_json(obj), nl=False)


_STATUS_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


# ======================================================================================
# verbs


@handle_errors
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the result object as JSON on stdout.")) -> None:
    """Check the install: torch, CUDA, GPUs, numerics, data home, disk.

    Also reports cuDNN, bf16 support, optional extras and HF_HUB_OFFLINE. Exits 1 with
    advice when a check fails; warnings and notes do not fail.
    """
    from fxbench.doctor import run_doctor

    checks = run_doctor()
    failed = [c for c in checks if c.status == "fail"]
    counts = {s: sum(c.status == s for c in checks) for s in _STATUS_STYLE}
    if as_json:
        _echo_json({"ok": not failed, "counts": counts, "checks": [asdict(c) for c in checks]})
    else:
        name_w = max(len(c.name) for c in checks)
        if name_w + max(len(c.value) for c in checks) + 17 <= out.width:
            table = Table(title="fxbench doctor", show_lines=False)
            table.add_column("check", no_wrap=True)
            table.add_column("status", no_wrap=True)
            table.add_column("value")
            for c in checks:
                table.add_row(c.name, f"[{_STATUS_STYLE[c.status]}]{c.status}[/]", c.value)
            out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred
        else:  # a narrow terminal: aligned lines, so no path is broken in the middle by a table cell
            out.print("fxbench doctor", markup=False)
            for c in checks:
                out.print(f"  {c.name:<{name_w}}  {c.status:<4}  {c.value}", markup=False, soft_wrap=True)
        for c in checks:
            if c.advice and c.status != "ok":
                out.print(f"  {c.status} {c.name}: {c.advice}", markup=False, soft_wrap=True)
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()), markup=False)
    if failed:
        raise FxbenchError(
            f"doctor: {len(failed)} check(s) failed: {', '.join(c.name for c in failed)}",
            "see the advice above",
        )


@handle_errors
def runs(
    root: Path | None = typer.Argument(
        None, metavar="dir", help="Folder to search (default: $FXBENCH_RUNS or ./runs).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per run on stdout."),
) -> None:
    """List runs: status, epochs, best val metric, test accesses.

    Looks in dir/* and dir/*/* for run folders (they hold config.resolved.yaml or run.json).
    """
    from fxbench.paths import default_runs_root

    explicit = root is not None
    root = root if root is not None else default_runs_root()
    if explicit and not root.is_dir():
        raise UsageError(f"runs folder not found: {root}", "pass the folder that holds your run folders")
    summaries = [summarize_run(run, root) for run in find_runs(root)]
    if as_json:
        _echo_json([asdict(s) for s in summaries])
        return
    sweeps = _sweep_lines(root)
    if not summaries and not sweeps:
        console.print(f"no runs under {root} (train one with `fxbench train`, or pass the folder)", markup=False)
        return
    if not summaries:  # a submitted sweep whose jobs have not started yet
        for line in sweeps:
            out.print(line, markup=False)
        return
    # Names are paths relative to the root in the title (--json has full paths). Short cells
    # never wrap; a long name folds rather than being cut off. When every run selects on the
    # same metric, its name goes in the header to keep the table narrow.
    metrics = {s.selection_metric for s in summaries if s.best_value is not None}
    shared = metrics.pop() if len(metrics) == 1 else None
    table = Table(title=f"{len(summaries)} run{'s' if len(summaries) != 1 else ''} in {root.resolve()}")
    table.add_column("name", overflow="fold", min_width=16)
    table.add_column("status", no_wrap=True)
    table.add_column("model", overflow="ellipsis", no_wrap=True, max_width=24)
    table.add_column("epochs", no_wrap=True, justify="right")
    table.add_column(f"best {shared}" if shared else "best val", no_wrap=True)
    table.add_column("tests", no_wrap=True, justify="right")
    for s in summaries:
        epochs = f"{s.epochs_done}/{s.epochs_planned}" if s.epochs_planned else str(s.epochs_done)
        best = "-"
        if s.best_value is not None:
            best = f"{s.best_value:.4f}" if shared else f"{s.selection_metric or '?'} {s.best_value:.4f}"
            if s.best_epoch is not None:
                best += f" @{s.best_epoch}"
        table.add_row(s.name, s.status, s.model or "-", epochs, best, str(s.test_accesses))
    out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred
    for line in sweeps:
        out.print(line, markup=False)


def _decision_line(d: dict[str, Any]) -> str:
    """The operating point in one short line; decision.json holds the provenance fields."""
    parts = [f"threshold {_fmt_num(d.get('threshold'))}"]
    if d.get("presence_source") is not None:
        parts.append(f"presence {d['presence_source']} >= {_fmt_num(d.get('presence_threshold'))}")
    if d.get("min_component"):
        parts.append(f"min_component {d['min_component']}")
    parts.append(f"tta {d.get('tta') or 'none'}")
    source = d.get("source") or "?"
    where = f" on {d['selected_on']}" if d.get("selected_on") else ""
    return ", ".join(parts) + f" (from {source}{where}; all fields in decision.json)"


def _fmt_num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."  # sha256: the prefix is enough to compare by eye
    return str(value)


@handle_errors
def show(
    run: Path = typer.Argument(
        ..., help="Run folder (or its name under ./runs).", autocompletion=complete_run_dir
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary object as JSON on stdout."),
) -> None:
    """Summarise a run (or ensemble/blend/peer folder): config, metrics with CIs, decision, files.
    For a sweep folder: its jobs' state (pending, running, finished, failed with the log tail)."""
    from fxbench.launch.state import is_sweep_dir

    if is_sweep_dir(run) and not is_run_dir(run):
        _show_sweep(run, as_json)
        return
    run = resolve_run(run, results=True)
    result = describe_run(run)
    summary = summarize_run(run)
    config_path = run / "config.resolved.yaml"
    metrics, decision, max_accesses = result["metrics"], result["decision"], result["max_test_accesses"]
    if as_json:
        _echo_json(result)
        return
    out.print(f"run {run}  status {summary.status}", markup=False)
    if read_yaml_lenient(config_path) is None:
        out.print(f"  config: {config_path} missing or unreadable", markup=False)
    else:
        cfg = result["config"]
        out.print("  config: " + ", ".join(f"{k}={_fmt_num(v)}" for k, v in cfg.items() if v is not None), markup=False)
    best = "-" if summary.best_value is None else f"{summary.selection_metric} {summary.best_value:.4f}"
    if summary.best_value is not None and summary.best_epoch is not None:
        best += f" at epoch {summary.best_epoch}"
    out.print(f"  epochs done: {summary.epochs_done}; best val: {best}; test accesses: {summary.test_accesses} "
              f"(max over the runs it is built from: {max_accesses})", markup=False)
    if result["decision_source"] == "user-fixed":
        out.print("  test metrics: user-fixed operating point (not chosen on val)", markup=False)
    if metrics:
        table = Table(title="metrics (95% CI)")
        table.add_column("split", no_wrap=True)
        table.add_column("metric", no_wrap=True)
        table.add_column("value", justify="right")
        table.add_column("CI", justify="right")
        for split, values in metrics.items():
            if not values:
                table.add_row(split, "(no headline metrics found)", "", "")
            for key, v in values.items():
                ci = f"[{v['ci_low']:.4f}, {v['ci_high']:.4f}]" if v["ci_low"] is not None and v["ci_high"] is not None else ""
                table.add_row(split, key, f"{v['value']:.4f}", ci)
        out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred
    if decision is not None:
        out.print("  decision: " + _decision_line(decision), markup=False)
    out.print("  artifacts:", markup=False)
    for item in result["artifacts"]:
        out.print(f"    {item['path']}  ({item['bytes']:,} bytes)", markup=False)


def _show_sweep(sweep_dir: Path, as_json: bool) -> None:
    from fxbench.cli.sweep_view import print_sweep_state
    from fxbench.launch.state import sweep_states

    record, states = sweep_states(sweep_dir)
    if as_json:
        _echo_json({"sweep": str(sweep_dir), "launcher": record.get("launcher"), "jobs": [s.to_dict() for s in states]})
        return
    print_sweep_state(out, sweep_dir, record, states)


def _sweep_lines(root: Path) -> list[str]:
    """One line per sweep folder under ``root`` (or ``root`` itself) with its jobs' states."""
    from fxbench.launch.state import is_sweep_dir, state_counts, sweep_states

    folders = [root] if is_sweep_dir(root) else [d for d in subdirs(root) if is_sweep_dir(d)]
    lines = []
    for folder in folders:
        record, states = sweep_states(folder, tail=0)
        counts = ", ".join(f"{n} {s}" for s, n in state_counts(states).items())
        launcher = (record.get("launcher") or {}).get("name", "local")
        lines.append(f"sweep {folder} ({launcher}): {counts or 'no jobs'}  (fxbench show {folder})")
    return lines


@handle_errors
def models(as_json: bool = typer.Option(False, "--json", help="Print [{name, description, default}] on stdout.")) -> None:
    """List the model names accepted by model.name."""
    try:
        from fxbench import models as registry
    except ImportError as err:
        raise FxbenchError(f"the model registry is not available in this install: {err}",
                           "reinstall fxbench; `fxbench doctor` checks the install") from err
    from fxbench.config import ModelConfig  # light (pydantic): marks the default

    names = sorted(registry.list_models())
    # Descriptions are optional so a registry without them still lists its names.
    describe = getattr(registry, "model_descriptions", None)
    descriptions: dict[str, str] = describe() if callable(describe) else {}
    default = ModelConfig().name
    rows = [{"name": n, "description": descriptions.get(n, ""), "default": n == default} for n in names]
    if as_json:
        _echo_json(rows)
        return
    table = Table(title="models (use with --set model.name=NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("description", overflow="fold")
    for row in rows:
        table.add_row(f"{row['name']}{' (default)' if row['default'] else ''}", str(row["description"]))
    out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred


def register(app: typer.Typer) -> None:
    """Add this module's verbs to ``app``."""
    app.command("doctor")(doctor)
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("models")(models)
