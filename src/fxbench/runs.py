"""Run folders as fxbench writes them: discovery, shell completion, summaries, headline metrics.

`runs`, `show` and the RUN-argument completion call these; the CLI only renders the result.
Only the formats fxbench itself writes are read (docs/internals.md, Run folder):
``run.json`` (``status``, ``selection_metric``, ``best_score``, ``best_epoch``, ``epochs_done``),
``history.csv`` (``epoch``, ``selection``), ``config.resolved.yaml``, ``RUN/.lock`` (a pid),
``metrics/<split>.json`` (``<metric>`` and ``<metric>_ci95: [lo, hi]`` at the top level).
A missing or unreadable file becomes an empty cell, never a crash: these are also how people
look at old or broken runs. Module level imports only the standard library (completion is fast).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fxbench.errors import UsageError

#: A folder is a run folder when it holds one of these (config first: written before training).
RUN_MARKERS = ("config.resolved.yaml", "run.json")

def is_run_dir(path: Path) -> bool:
    """True when ``path`` looks like a run folder (has config.resolved.yaml or run.json)."""
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_runs(root: Path) -> list[Path]:
    """Run folders at ``root`` itself, ``root/*`` and ``root/*/*``, sorted by path.

    One level of grouping is searched because sweeps and seeds nest runs
    (``runs/dg_aug/seed_42``); deeper trees are not walked so listing stays instant.
    """
    if not root.is_dir():
        return []
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for child in subdirs(root):
        if is_run_dir(child):
            found.append(child)
        else:
            found.extend(grand for grand in subdirs(child) if is_run_dir(grand))
    return sorted(found)


def subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # unreadable folder: nothing to list there
        return []


def complete_run_dir(incomplete: str) -> list[str]:
    """Shell completion for RUN arguments: run folders holding config.resolved.yaml.

    Offers paths under the runs root (``./runs`` or ``$FXBENCH_RUNS``) and, when the typed
    word already has a folder part (``other/runs/``), run folders under that folder. A bare
    name matching a run under the root is offered as the name (`show` resolves names there).
    For verbs that need a path (``eval``, ``tune``, ``predict``...) use
    :func:`complete_run_path`, which never offers bare names.
    """
    return _complete_runs(incomplete, names=True)


def complete_run_path(incomplete: str) -> list[str]:
    """Like :func:`complete_run_dir`, but only paths: for RUN arguments that are opened as
    given (``eval``, ``tune``, ``predict``, ``ensemble``, ``blend``), where a bare run name
    would not resolve. Use as ``typer.Argument(..., autocompletion=complete_run_path)``."""
    return _complete_runs(incomplete, names=False)


def _complete_runs(incomplete: str, names: bool) -> list[str]:
    from fxbench.paths import default_runs_root

    default_root = default_runs_root()
    # (folder to search, the text the user typed for it: offered paths must start with it,
    # so "./runs/" completes to "./runs/x", not to the normalised "runs/x")
    roots: list[tuple[Path, str | None]] = [(default_root, None)]
    head = os.path.dirname(incomplete)
    if head and Path(head).is_dir():
        roots.append((Path(head), head))
    paths: set[str] = set()
    run_names: set[str] = set()
    for root, typed in roots:
        for run in find_runs(root):
            if (run / "config.resolved.yaml").is_file():
                rel = run.relative_to(root).as_posix() if run != root else ""
                paths.add(str(run) if typed is None else (f"{typed.rstrip('/')}/{rel}" if rel else typed))
                if typed is None:
                    run_names.add(rel or run.name)
    matches = {p for p in paths if p.startswith(incomplete)}
    if not matches and names and "/" not in incomplete:
        matches = {n for n in run_names if n.startswith(incomplete)}
    return sorted(matches)


def read_json_lenient(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_yaml_lenient(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def read_history(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [row for row in csv.DictReader(fh) if any((v or "").strip() for v in row.values())]
    except (OSError, csv.Error):
        return []


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN -> None


def _status(run: Path, run_json: dict[str, Any] | None) -> str:
    """Status recorded in run.json; 'running' whose lock holder is gone means it was killed."""
    from fxbench.artifacts.run import lock_is_stale

    if run_json is None:
        return "unknown"  # not started yet, or run.json unreadable
    status = str(run_json.get("status") or "unknown")
    # A killed trainer cannot update run.json, but its lock stays behind.
    if status == "running" and lock_is_stale(run):
        return "interrupted"
    return status


def _best_from_run_json(run_json: dict[str, Any], metric: str | None) -> tuple[str | None, float | None, int | None]:
    """(selection metric, best value, best epoch) as the trainer records them in run.json."""
    name = run_json.get("selection_metric") or metric
    epoch = _as_float(run_json.get("best_epoch"))
    return (str(name) if name else None), _as_float(run_json.get("best_score")), (int(epoch) if epoch is not None else None)


def _best_from_history(rows: list[dict[str, str]]) -> tuple[float | None, int | None]:
    """Highest ``selection`` score over validated epochs of history.csv (every selection
    metric, neg_loss included, is higher-is-better); for a run still training."""
    best: tuple[float | None, int | None] = (None, None)
    for i, row in enumerate(rows, start=1):
        value = _as_float(row.get("selection"))
        if value is not None and (best[0] is None or value > best[0]):
            epoch = _as_float(row.get("epoch"))
            best = (value, int(epoch) if epoch is not None else i)
    return best


def _count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    except OSError:
        return 0


@dataclass
class RunSummary:
    """One row of `fxbench runs` (also the `--json` record)."""

    name: str
    path: str
    status: str
    model: str | None
    epochs_done: int
    epochs_planned: int | None
    selection_metric: str | None
    best_value: float | None
    best_epoch: int | None
    test_accesses: int


def summarize_run(run: Path, root: Path | None = None) -> RunSummary:
    """Read a run folder's status, progress and best validation value without loading torch."""
    config = read_yaml_lenient(run / "config.resolved.yaml") or {}
    run_json = read_json_lenient(run / "run.json")
    history = read_history(run / "history.csv")
    train_section, model_section = config.get("train"), config.get("model")
    train: dict[str, Any] = train_section if isinstance(train_section, dict) else {}
    model: dict[str, Any] = model_section if isinstance(model_section, dict) else {}
    metric, best, best_epoch = _best_from_run_json(run_json or {}, train.get("selection_metric"))
    if best is None:
        best, best_epoch = _best_from_history(history)
    try:
        name = run.relative_to(root).as_posix() if root is not None and run != root else run.name
    except ValueError:
        name = run.name
    planned = _as_float(train.get("epochs"))
    return RunSummary(
        name=name,
        path=str(run),
        status=_status(run, run_json),
        model=model.get("name"),
        epochs_done=len(history) or int(_as_float((run_json or {}).get("epochs_done")) or 0),
        epochs_planned=int(planned) if planned is not None else None,
        selection_metric=metric,
        best_value=best,
        best_epoch=best_epoch,
        test_accesses=_count_lines(run / "test_access.log"),
    )


def resolve_run(run: Path, results: bool = False) -> Path:
    """A RUN argument: a path, or a name under the runs root (``fxbench show baseline-2026...``).

    With ``results``, result folders (ensemble, blend, peer: members.json or metrics/test.json)
    are accepted too.
    """
    from fxbench.paths import default_runs_root

    candidates = [run] if run.is_absolute() else [run, default_runs_root() / run]
    for cand in candidates:
        if cand.is_dir():
            is_result = results and any((cand / m).is_file() for m in ("members.json", "metrics/test.json"))
            if not is_run_dir(cand) and not is_result:
                raise UsageError(
                    f"{cand} is not a run folder (no config.resolved.yaml or run.json)",
                    "pass a folder made by `fxbench train`; `fxbench runs` lists them",
                )
            return cand
    raise UsageError(f"run folder not found: {run}", "`fxbench runs` lists the runs under ./runs or $FXBENCH_RUNS")


def headline_metrics(body: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{metric: {value, ci_low, ci_high}}`` for the HEADLINE_METRICS of a ``metrics/<split>.json``
    (top-level ``<metric>`` and its ``<metric>_ci95: [lo, hi]``, as fxbench.evaluate writes them).
    A metric that is absent or NaN is left out; a CI that is absent is None."""
    from fxbench.evaluate.bootstrap import HEADLINE_METRICS

    found: dict[str, dict[str, float | None]] = {}
    for key in HEADLINE_METRICS:
        value = _as_float(body.get(key))
        if value is None:
            continue
        ci = body.get(f"{key}_ci95")
        lo, hi = (_as_float(ci[0]), _as_float(ci[1])) if isinstance(ci, list) and len(ci) == 2 else (None, None)
        found[key] = {"value": value, "ci_low": lo, "ci_high": hi}
    return found


def config_summary(config: dict[str, Any]) -> dict[str, Any]:
    """The handful of resolved-config values `show` prints (None where absent)."""

    def get(section: str, key: str) -> Any:
        node = config.get(section)
        return node.get(key) if isinstance(node, dict) else None

    return {
        "model": get("model", "name"),
        "image_size": get("data", "image_size"),
        "epochs": get("train", "epochs"),
        "batch_size": get("train", "batch_size"),
        "lr": get("optim", "lr"),
        "schedule": get("schedule", "name"),
        "seed": get("train", "seed"),
        "selection_metric": get("train", "selection_metric"),
    }


def run_files(run: Path) -> list[dict[str, Any]]:
    """``[{path, bytes}]`` of the run folder's records that exist, in a fixed order."""
    fixed = ["config.resolved.yaml", "env.json", "run.json", "history.csv", "checkpoints/best.pt",
             "checkpoints/last.pt", "decision.json", "test_access.log"]
    paths = [run / rel for rel in fixed]
    for pattern in ("predictions/*.npz", "metrics/*.json", "plots/*", "*.md"):
        paths.extend(sorted(run.glob(pattern)))
    return [{"path": str(path), "bytes": path.stat().st_size} for path in paths if path.is_file()]


def describe_run(run: Path) -> dict[str, Any]:
    """Everything `show` prints about a run (or an ensemble/blend/peer result folder)."""
    from fxbench.select.seal import built_from_max_accesses

    summary = summarize_run(run)
    metrics: dict[str, dict[str, Any]] = {}
    for path in sorted((run / "metrics").glob("*.json")):
        body = read_json_lenient(path)
        metrics[path.stem] = headline_metrics(body) if body is not None else {}
    config = read_yaml_lenient(run / "config.resolved.yaml")
    return {
        "run": str(run),
        "status": summary.status,
        "config": config_summary(config or {}),
        "epochs_done": summary.epochs_done,
        "selection_metric": summary.selection_metric,
        "best_value": summary.best_value,
        "best_epoch": summary.best_epoch,
        "test_accesses": summary.test_accesses,
        "max_test_accesses": built_from_max_accesses(run),
        "decision_source": (read_json_lenient(run / "metrics" / "test.json") or {}).get("decision_source"),
        "metrics": metrics,
        "decision": read_json_lenient(run / "decision.json"),
        "artifacts": run_files(run),
    }
