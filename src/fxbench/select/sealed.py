"""Reading sealed test artifacts for ``compare`` and ``cv``, through the one sealed path.

A *sealed test artifact* is a folder's ``predictions/test.npz`` that the seal already scored:
``metrics/test.json`` names its sha256 and the folder's ``test_access.log`` has that access.
Reading it again for a new number (a comparison, a pool) is one more test access: it goes
through :func:`fxbench.select.seal.score_under_seal`, which re-authorises the folder's decision
(its ``decision.json``; the user-fixed operating point its metrics record; a cv pool's decision
through its fold runs), appends the access to the folder's log and to those of the runs it is
built from, and rewrites ``metrics/test.json`` with the same numbers and the new access counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fxbench.artifacts.decision import DECISION_FILE, Decision, read_decision
from fxbench.artifacts.predictions import Predictions, load_predictions
from fxbench.errors import DataError, ProtocolError
from fxbench.io import read_json, sha256_file
from fxbench.select.compare import CompareInput, operating_point
from fxbench.select.seal import cache_scorer, read_test_access, score_under_seal

#: Keys of metrics/test.json that the seal recomputes on every access.
_ACCESS_KEYS = ("test_accesses", "member_runs", "member_test_accesses", "max_test_accesses", "decision_label")
#: Where a cv pool lists its fold runs.
POOL_FILE = "cv_pool.json"


def members_of(folder: Path) -> list[Path]:
    """Runs a result folder is built from: the ``member_runs`` its sealed test metrics record
    (ensembles, blends, pools), else its ``members.json`` / ``cv_pool.json``; none for a run."""
    metrics = folder / "metrics" / "test.json"
    recorded = read_json(metrics).get("member_runs") if metrics.is_file() else None
    if recorded:
        return [Path(r) for r in recorded]
    for name in ("members.json", POOL_FILE):
        path = folder / name
        if path.is_file():
            doc = read_json(path)
            runs = doc.get("runs") or [m.get("run") for m in doc.get("members", []) if isinstance(m, dict)]
            return [Path(r) for r in runs if r]
    return []


def _fix(folder: Path) -> str:
    return (f"score it once under the seal first: `fxbench tune {folder}` then "
            f"`fxbench eval {folder} --split test --decision {folder / DECISION_FILE}`")


def check_sealed(folder: Path) -> None:
    """Refuse a folder whose test predictions were never scored under the seal (ProtocolError)."""
    files = (folder / "predictions" / "test.npz", folder / "metrics" / "test.json")
    if not all(f.is_file() for f in files) or not read_test_access(folder):
        raise ProtocolError(f"{folder} has no sealed test artifact (predictions/test.npz scored by the seal)",
                            _fix(folder))


def sealed_test_input(folder: str | Path, command: str | Sequence[str], kind: str = "compare") -> CompareInput:
    """A folder's sealed test predictions at the operating point the seal scored them with.

    One test access of ``folder`` (and of each run it is built from), logged with ``kind``.

    Raises:
        ProtocolError: never scored under the seal, changed since, or the decision no longer verifies.
    """
    folder = Path(folder)
    pred, metrics, recorded = _load_sealed(folder)
    art = folder / "predictions" / "test.npz"
    captured: dict[str, Decision] = {}

    def same_numbers(_: Any, decision: Decision) -> dict[str, Any]:
        captured["decision"] = decision
        return {k: v for k, v in metrics.items() if k not in _ACCESS_KEYS}

    kw: dict[str, Any] = {"kind": kind, "command": command, "scorer": same_numbers, "members": members_of(folder),
                          "artifact_path": art, "metrics_kind": str(metrics.get("kind") or "run")}
    if metrics.get("decision_source") == "user-fixed":
        kw["decision"] = Decision(**recorded, tta=pred.meta.get("tta"), selected_on="user", source="user-fixed")
    elif (folder / POOL_FILE).is_file():
        kw["decision"] = read_decision(folder / DECISION_FILE)
    else:
        kw.update(decision_path=folder / DECISION_FILE, checkpoint=pred.meta.get("checkpoint"),
                  checkpoint_sha256=pred.meta.get("checkpoint_sha256"))
    score_under_seal(folder, pred, **kw)
    return _input(folder, pred, captured["decision"], recorded, str(metrics.get("box_score") or "max"))


def _load_sealed(folder: Path) -> tuple[Predictions, dict[str, Any], dict[str, Any]]:
    """(test predictions, their metrics/test.json, the operating point recorded there)."""
    check_sealed(folder)
    art = folder / "predictions" / "test.npz"
    metrics = dict(read_json(folder / "metrics" / "test.json"))
    if metrics.get("predictions_sha256") and metrics["predictions_sha256"] != sha256_file(art):
        raise ProtocolError(f"{art} is not the artifact the seal scored (sha256 differs from metrics/test.json)",
                            _fix(folder))
    pred = load_predictions(art)
    return pred, metrics, operating_point(metrics, pred)


def _input(folder: Path, pred: Predictions, decision: Decision, recorded: dict[str, Any],
           box_score: str = "max") -> CompareInput:
    point = operating_point(decision.to_dict(), pred)
    if point != recorded:
        raise ProtocolError(f"{folder}: its decision no longer matches the operating point its test metrics were "
                            f"scored at ({point} vs {recorded})", _fix(folder))
    return CompareInput(folder.name, folder, "test", pred, point, decision.sha256(),
                        str(decision.to_dict().get("box_score") or box_score))


def fold_input(folder: str | Path) -> CompareInput:
    """A fold run's sealed test predictions at its verified tuned decision, for a cv pool.

    Not itself logged: the caller must score the pool through :func:`score_pool`, which
    re-verifies this decision and logs the access in the fold run (a member of the pool).

    Raises:
        ProtocolError: not sealed, or not a tuned decision (a pool needs val-chosen operating points).
    """
    from fxbench.select.seal import authorize_test

    folder = Path(folder)
    pred, metrics, recorded = _load_sealed(folder)
    if metrics.get("decision_source") != "tune":
        raise ProtocolError(f"{folder} was tested at a {metrics.get('decision_source')} operating point; a cv pool "
                            "needs each fold's decision tuned on its val", "run `fxbench train --fold K` for it")
    decision = authorize_test(folder, folder / DECISION_FILE, None, checkpoint=pred.meta.get("checkpoint"),
                              checkpoint_sha256=pred.meta.get("checkpoint_sha256"))
    return _input(folder, pred, decision, recorded)


def compare_folders(folders: Sequence[str | Path], split: str, command: str | Sequence[str]) -> list[CompareInput]:
    """Inputs of ``compare``: val predictions as saved, or sealed test artifacts (logged)."""
    from fxbench.select.compare import val_input

    if split == "val":
        return [val_input(f) for f in folders]
    if split != "test":
        raise DataError(f"--split must be val or test, not {split!r}")
    for f in folders:  # refuse before logging any access
        check_sealed(Path(f))
    return [sealed_test_input(f, command) for f in folders]


def score_pool(
    out: str | Path,
    pooled: Predictions,
    point: dict[str, Any],
    folds: Sequence[CompareInput],
    command: str | Sequence[str],
    *,
    bootstrap: int = 2000,
    seed: int = 0,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Score a pooled cross-validation artifact once under the seal into ``out``.

    Writes ``out/decision.json``: the pool's operating point, naming each fold run's verified
    decision by its sha256 (the seal re-verifies them), then ``out/predictions/test.npz`` and
    ``out/metrics/test.json`` through :func:`~fxbench.select.seal.score_under_seal` (once: a
    second pool into the same folder is refused).
    """
    from fxbench.artifacts.decision import write_decision

    out = Path(out)
    if read_test_access(out):
        raise ProtocolError(f"{out} already holds a scored pool; a pool is tested once",
                            "choose a new --out folder (and a reason to look at test again)")
    fold_decisions = [{"run": str(f.folder.resolve()), "decision_sha256": f.decision_sha256} for f in folds]
    decision = Decision.model_validate({**point, "tta": pooled.meta.get("tta"), "selected_on": "val",
                                        "source": "tune", "kind": "cv", "fold_decisions": fold_decisions}).sealed()
    out.mkdir(parents=True, exist_ok=True)
    write_decision(out, decision)
    return score_under_seal(out, pooled, kind="cv", command=command, decision=decision,
                            members=[f.folder for f in folds], scorer=cache_scorer(bootstrap, seed),
                            save_to=out / "predictions" / "test.npz", once=True, extra=extra)
