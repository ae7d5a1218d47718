"""The test seal: no test evaluation without a frozen decision, and every access on record.

``eval --split test`` (and ``ensemble``/``blend``) call :func:`authorize_test` before touching
test predictions and :func:`log_test_access` after writing the metrics. The log is an
append-only JSON-lines file, ``RUN/test_access.log``; reports show its line count so a reader
sees how many times the test split was looked at.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fxbench.errors import DataError, ProtocolError, UsageError
from fxbench.io import sha256_file
from fxbench.select.decision import DECISION_FILE, Decision, read_decision, utc_now

#: Append-only record of test evaluations inside a run folder.
TEST_ACCESS_LOG = "test_access.log"


def val_predictions_path(run_dir: str | Path) -> Path:
    """Where a run keeps its val predictions artifact."""
    return Path(run_dir) / "predictions" / "val.npz"


def authorize_test(
    run_dir: str | Path,
    decision_path: str | Path | None,
    threshold: float | None,
    *,
    presence_source: str = "auto",
    presence_threshold: float = 0.5,
    min_component: int = 0,
    tta: str | None = None,
) -> Decision:
    """Return the frozen decision a test evaluation of ``run_dir`` must apply.

    Exactly one of ``decision_path`` (a file written by ``tune``/``ensemble``/``blend``) and
    ``threshold`` (recorded as ``source="user-fixed"``) must be given: the operating point of a
    test evaluation is always named on the command line, never picked up implicitly. A tuned
    decision must have been selected on val and, when the run still has its val predictions,
    on exactly those bytes.

    Raises:
        ProtocolError: no decision at all, a decision not chosen on val, or stale val predictions.
        UsageError: both given.
        DataError: the decision file is missing or malformed.
    """
    run_dir = Path(run_dir)
    if decision_path is None and threshold is None:
        have = run_dir / DECISION_FILE
        fix = (f"pass `--decision {have}`" if have.is_file()
               else f"run `fxbench tune {run_dir}` and pass `--decision {have}`")
        raise ProtocolError(
            f"the test split is sealed: evaluating {run_dir} on test needs a decision chosen on val",
            f"{fix}, or fix the operating point yourself with `--threshold T`",
        )
    if decision_path is not None and threshold is not None:
        raise UsageError("give either --decision or --threshold, not both")

    if threshold is not None:
        if not 0.0 < float(threshold) < 1.0:
            raise UsageError(f"--threshold must lie in (0, 1), got {threshold}")
        return Decision(
            threshold=float(threshold),
            presence_source=presence_source,
            presence_threshold=presence_threshold,
            min_component=min_component,
            tta=tta,
            selected_on="user",
            selection_metric=None,
            val_predictions_sha256=None,
            source="user-fixed",
        )

    assert decision_path is not None
    decision = read_decision(decision_path)
    if decision.source == "tune" and decision.selected_on != "val":
        raise ProtocolError(
            f"{decision_path} was not selected on val (selected_on={decision.selected_on})",
            f"run `fxbench tune {run_dir}`",
        )
    val_path = val_predictions_path(run_dir)
    if decision.val_predictions_sha256 and val_path.is_file():
        current = sha256_file(val_path)
        if current != decision.val_predictions_sha256:
            raise ProtocolError(
                f"{decision_path} was tuned on other val predictions than {val_path} (sha256 differs)",
                f"re-run `fxbench tune {run_dir}` on the current predictions",
            )
    return decision


def log_test_access(
    run_dir: str | Path,
    decision_sha256: str,
    command: str | Sequence[str],
    metrics_path: str | Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Append one JSON line (time, decision sha256, command, metrics path) to the access log.

    The line is written with a single ``write`` on an ``O_APPEND`` descriptor and fsynced, so
    concurrent writers cannot interleave within a line and a crash cannot lose a logged access.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(command, str):
        command = shlex.join(str(c) for c in command)
    metrics = Path(metrics_path) if metrics_path is not None else run_dir / "metrics" / "test.json"
    record: dict[str, Any] = {
        "time": utc_now(),
        "decision_sha256": decision_sha256,
        "command": command,
        "metrics": metrics.as_posix(),
    }
    if extra:
        record.update(extra)
    line = (json.dumps(record, sort_keys=False) + "\n").encode("utf-8")
    path = run_dir / TEST_ACCESS_LOG
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_test_access(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``RUN/test_access.log`` (empty when the test split was never touched)."""
    path = Path(run_dir) / TEST_ACCESS_LOG
    if not path.is_file():
        return []
    records: list[dict[str, Any]] = []
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            records.append(json.loads(raw))
        except json.JSONDecodeError as err:
            # A damaged log must not be under-counted silently: that would hide test accesses.
            raise DataError(f"{path}:{n} is not a JSON line", "repair the file by hand; never delete lines") from err
    return records


def test_access_count(run_dir: str | Path) -> int:
    """How many times the test split of ``run_dir`` was evaluated."""
    return len(read_test_access(run_dir))


# pytest would otherwise try to collect these as tests when imported into a test module.
test_access_count.__test__ = False  # type: ignore[attr-defined]
