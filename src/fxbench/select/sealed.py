"""Reading sealed test artifacts for ``compare`` and ``cv``: the one adapter to the seal.

A *sealed test artifact* is a folder's ``predictions/test.npz`` that the seal already scored:
``metrics/test.json`` names its sha256, the folder's ``test_access.log`` has that access, and
the operating point it was scored at is re-authorised by :func:`fxbench.select.seal.authorize_test`
(the folder's ``decision.json``, or the user-fixed threshold the metrics record). Reading it
again for a new number is one more test access, appended to the folder's log (and to the logs
of the runs it is built from).

Everything ``compare`` and ``cv`` know about the seal goes through this module, so a change of
the seal's API is a change here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fxbench.errors import DataError, ProtocolError
from fxbench.io import read_json, sha256_file
from fxbench.predict.artifact import load_predictions
from fxbench.select.compare import CompareInput, operating_point
from fxbench.select.decision import DECISION_FILE
from fxbench.select.seal import authorize_test, log_test_access, read_test_access


def _members(folder: Path) -> list[Path]:
    """Runs a result folder is built from (ensemble/blend ``members.json``, cv ``cv_pool.json``)."""
    for name in ("members.json", "cv_pool.json"):
        path = folder / name
        if path.is_file():
            doc = read_json(path)
            runs = doc.get("runs") or [m.get("run_dir") for m in doc.get("members", []) if isinstance(m, dict)]
            return [Path(r) for r in runs if r]
    return []


def sealed_test_input(folder: str | Path, command: str | Sequence[str], kind: str = "compare") -> CompareInput:
    """A folder's sealed test predictions at the operating point the seal scored them with.

    Logs one test access in ``folder`` (and in each member run) with ``kind``.

    Raises:
        ProtocolError: the folder's test predictions were never scored under the seal, changed
            since, or their decision no longer verifies.
        DataError: files missing or unreadable.
    """
    folder = Path(folder)
    art, metrics_path = folder / "predictions" / "test.npz", folder / "metrics" / "test.json"
    fix = (f"score it once under the seal first: `fxbench tune {folder}` then "
           f"`fxbench eval {folder} --split test --decision {folder / DECISION_FILE}`")
    if not art.is_file() or not metrics_path.is_file() or not read_test_access(folder):
        raise ProtocolError(f"{folder} has no sealed test artifact (predictions/test.npz scored by the seal)", fix)
    metrics = dict(read_json(metrics_path))
    sha = sha256_file(art)
    if metrics.get("predictions_sha256") and metrics["predictions_sha256"] != sha:
        raise ProtocolError(f"{art} is not the artifact the seal scored (sha256 differs from metrics/test.json)", fix)
    pred = load_predictions(art)
    if pred.meta.get("split") != "test":
        raise ProtocolError(f"{art} is not a test artifact (split recorded as {pred.meta.get('split')!r})", fix)
    recorded = operating_point(metrics, pred)
    if metrics.get("decision_source") == "user-fixed":
        decision = authorize_test(folder, None, recorded["threshold"], presence_source=recorded["presence_source"],
                                  presence_threshold=recorded["presence_threshold"],
                                  min_component=recorded["min_component"])
    else:
        decision = authorize_test(folder, folder / DECISION_FILE, None)
    point = operating_point(decision.to_dict(), pred)
    if point != recorded:
        raise ProtocolError(f"{folder}: decision.json no longer matches the operating point its test metrics were "
                            f"scored at ({point} vs {recorded})", fix)
    digest = decision.sha256()
    extra: dict[str, Any] = {"kind": kind}
    log_test_access(folder, digest, command, metrics_path=metrics_path, extra=extra)
    for member in _members(folder):
        if member.is_dir():
            log_test_access(member, digest, command, metrics_path=metrics_path, extra={**extra, "via": str(folder)})
    return CompareInput(folder.name, folder, "test", pred, point, digest)


def compare_folders(folders: Sequence[str | Path], split: str, command: str | Sequence[str]) -> list[CompareInput]:
    """Inputs of ``compare``: val predictions as saved, or sealed test artifacts (logged)."""
    from fxbench.select.compare import val_input

    if split == "val":
        return [val_input(f) for f in folders]
    if split != "test":
        raise DataError(f"--split must be val or test, not {split!r}")
    # Check every folder before logging any access: a refused comparison looks at nothing.
    for f in folders:
        folder = Path(f)
        if not (folder / "predictions" / "test.npz").is_file() or not read_test_access(folder):
            raise ProtocolError(f"{folder} has no sealed test artifact (predictions/test.npz scored by the seal)",
                                f"compare on val, or score it once: `fxbench eval {folder} --split test --decision "
                                f"{folder / DECISION_FILE}`")
    return [sealed_test_input(f, command) for f in folders]


def score_pool(
    out: str | Path,
    pooled: Any,
    decision: dict[str, Any],
    members: Sequence[str | Path],
    command: str | Sequence[str],
    *,
    bootstrap: int = 2000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a pooled cross-validation artifact once under the seal into ``out``.

    Writes ``out/decision.json`` (the pooled operating point, composed of the members' frozen
    decisions), ``out/predictions/test.npz`` and ``out/metrics/test.json``, and logs the access in
    ``out``. A pool folder is tested once (like ensembles): a second call refuses.

    Raises:
        ProtocolError: ``out`` already has a test access.
    """
    from fxbench.evaluate import evaluate_predictions
    from fxbench.io import write_json_atomic
    from fxbench.predict.artifact import save_predictions
    from fxbench.select.decision import Decision, write_decision
    from fxbench.select.seal import test_access_count

    out = Path(out)
    if read_test_access(out):
        raise ProtocolError(f"{out} already holds a scored pool; a pool is tested once",
                            "choose a new --out folder (and a reason to look at test again)")
    out.mkdir(parents=True, exist_ok=True)
    record = Decision.model_validate({**decision, "selected_on": "val", "source": "tune", "kind": "cv",
                                      "fold_runs": [str(m) for m in members]})
    write_decision(out, record)
    authorised = authorize_test(out, out / DECISION_FILE, None)
    art = save_predictions(out / "predictions" / "test.npz", pooled)
    metrics = evaluate_predictions(pooled, authorised.to_dict(), bootstrap=bootstrap, seed=seed)
    metrics.update(extra or {})
    metrics.update(split="test", kind="cv", run=out.name, decision_source="cv (each fold's tuned decision)",
                   predictions_sha256=sha256_file(art))
    path = out / "metrics" / "test.json"
    log_test_access(out, authorised.sha256(), command, metrics_path=path, extra={"kind": "cv"})
    metrics["test_accesses"] = test_access_count(out)
    write_json_atomic(path, metrics)
    return metrics
