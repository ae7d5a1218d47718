"""The test seal: no test number without a verified decision, and every access on record.

:func:`score_under_seal` is THE one path to a test-split number. ``eval --split test``,
``ensemble``'s and ``blend``'s test step and peer scoring call it; compare and cross-validation
must too. Nothing else writes ``metrics/test.json``. It authorises (:func:`authorize_test`),
scores with a pluggable scorer, writes the metrics atomically and appends one JSON line to
``FOLDER/test_access.log`` and to every member run's log, so access counts follow the data.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fxbench.artifacts.decision import (
    DECISION_FILE,
    TUNE_RECORD,
    Decision,
    read_decision,
    read_tune_record,
    run_identity,
    utc_now,
)
from fxbench.errors import DataError, ProtocolError, UsageError
from fxbench.io import sha256_file, write_json_atomic

#: Append-only record of test evaluations inside a run folder.
TEST_ACCESS_LOG = "test_access.log"
#: What ``kind`` a sealed scoring may name (free text is allowed; these are the known ones).
KINDS = ("run", "ensemble", "blend", "peer", "cv", "compare")
#: A scorer turns the test predictions and the authorised decision into the metrics dict.
Scorer = Callable[[Any, Decision], dict[str, Any]]


def val_predictions_path(run_dir: str | Path) -> Path:
    """Where a run keeps its val predictions artifact."""
    return Path(run_dir) / "predictions" / "val.npz"


def _refuse(message: str, fix: str) -> ProtocolError:
    return ProtocolError(message, fix)


def authorize_test(
    run_dir: str | Path,
    decision_path: str | Path | None,
    threshold: float | None,
    *,
    presence_source: str = "auto",
    presence_threshold: float = 0.5,
    min_component: int = 0,
    tta: str | None = None,
    checkpoint: str | None = None,
    checkpoint_sha256: str | None = None,
) -> Decision:
    """Return the verified decision a test evaluation of ``run_dir`` must apply.

    Exactly one of ``decision_path`` (a file written by ``tune``/``ensemble``/``blend``) and
    ``threshold`` (recorded as ``source="user-fixed"``) must be given: the operating point of a
    test evaluation is always named on the command line, never picked up implicitly.

    A tuned decision (``source="tune"``) is accepted only when all of these hold:

    1. it was selected on val;
    2. its ``content_sha256`` equals the digest of its content (no hand edits);
    3. ``run_dir/tune/record.json`` names that digest (it was tuned in this folder, not copied
       from another run) and the run identity it records matches ``run_dir``'s;
    4. ``run_dir/predictions/val.npz`` exists and has the recorded sha256 (a missing val
       artifact is a refusal, not a pass);
    5. the checkpoint being scored (``checkpoint``, ``checkpoint_sha256``) is the one the val
       predictions came from.

    A decision file with ``source="user-fixed"`` is accepted and stays labelled user-fixed.

    Raises:
        ProtocolError: (exit 4) any check above fails, or no decision at all.
        UsageError: both given, or a threshold outside (0, 1).
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
            checkpoint=checkpoint,
        )

    assert decision_path is not None
    decision = read_decision(decision_path)
    if decision.source == "tune":
        verify_decision(run_dir, decision, decision_path, checkpoint=checkpoint, checkpoint_sha256=checkpoint_sha256)
    return decision


def verify_decision(
    run_dir: Path,
    decision: Decision,
    where: str | Path,
    *,
    checkpoint: str | None = None,
    checkpoint_sha256: str | None = None,
) -> None:
    """The checks of :func:`authorize_test` for a tuned decision (ProtocolError on the first failure)."""
    retune = f"re-run `fxbench tune {run_dir}`"
    user_fixed = "or test an operating point of your own with `--threshold T` (labelled user-fixed)"
    if decision.selected_on != "val":
        raise _refuse(f"{where} was not selected on val (selected_on={decision.selected_on})", retune)
    if not decision.content_sha256:
        raise _refuse(f"{where} has no content digest (written by an older fxbench, or edited)",
                      f"{retune}, {user_fixed}")
    if decision.content_digest() != decision.content_sha256:
        raise _refuse(f"{where} was edited after tuning (its content no longer matches content_sha256)",
                      f"{retune}, {user_fixed}")
    record = read_tune_record(run_dir)
    if record is None or record.get("decision_content_sha256") != decision.content_sha256:
        raise _refuse(f"{where} was not tuned in {run_dir} ({run_dir / TUNE_RECORD} does not name it)",
                      f"run `fxbench tune {run_dir}` and pass `--decision {run_dir / DECISION_FILE}`")
    if decision.run:
        here = run_identity(run_dir)
        for key in ("config_sha256", "started"):
            if key in decision.run and key in here and decision.run[key] != here[key]:
                raise _refuse(f"{where} was tuned on another run than {run_dir} ({key} differs)", retune)
    val_path = val_predictions_path(run_dir)
    if not decision.val_predictions_sha256:
        raise _refuse(f"{where} names no val predictions (val_predictions_sha256 is empty)", retune)
    if not val_path.is_file():
        raise _refuse(f"{run_dir} has no {val_path.name} to verify {where} against (a missing val artifact is refused)",
                      f"run `fxbench eval {run_dir} --split val`, then `fxbench tune {run_dir}`")
    if sha256_file(val_path) != decision.val_predictions_sha256:
        raise _refuse(f"{where} was tuned on other val predictions than {val_path} (sha256 differs)",
                      f"re-run `fxbench tune {run_dir}` on the current predictions")
    if checkpoint and decision.checkpoint and checkpoint != decision.checkpoint:
        raise _refuse(f"{where} was tuned on the predictions of {decision.checkpoint}, not {checkpoint}",
                      f"evaluate --which {Path(decision.checkpoint).stem}, or run `fxbench eval {run_dir} --split val "
                      f"--which {Path(checkpoint).stem}` and `fxbench tune {run_dir}` first")
    if checkpoint_sha256 and decision.checkpoint_sha256 and checkpoint_sha256 != decision.checkpoint_sha256:
        raise _refuse(f"{where} was tuned on another {decision.checkpoint or 'checkpoint'} (checkpoint sha256 differs)",
                      f"run `fxbench eval {run_dir} --split val --repredict`, then `fxbench tune {run_dir}`")


def check_true_split(pred: Any, split: str, where: str | Path) -> None:
    """Refuse predictions that are not really of ``split``.

    The artifact must record ``split`` in its meta, and when the prepared folder it names is
    readable, every image id must belong to ``split`` in its manifest: a test artifact copied
    over ``val.npz`` (or re-stamped ``split='val'``) is caught by its ids.

    Raises:
        ProtocolError: the recorded split differs or is missing, or ids belong to another split.
    """
    recorded = pred.meta.get("split")
    if recorded != split:
        raise ProtocolError(
            f"{where} is not a {split} artifact (split recorded as {recorded!r})",
            f"re-create it with `fxbench eval RUN --split {split}`; never copy predictions between splits",
        )
    prepared = pred.meta.get("prepared")
    manifest = Path(prepared) / "manifest.csv" if prepared else None
    if manifest is None or not manifest.is_file():
        return
    import csv

    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if pred.meta.get("fold") is not None:  # a cross-validation fold run: its split is the fold's
        from fxbench.data.folds import fold_rows

        rows = fold_rows(manifest.parent, rows, int(pred.meta["fold"]))
    split_of = {r.get("image_id"): r.get("split") for r in rows}
    wrong = [i for i in pred.image_ids if i in split_of and split_of[i] != split]
    if wrong:
        raise ProtocolError(
            f"{where} holds {len(wrong)} images of the {split_of[wrong[0]]} split (first: {wrong[0]}), "
            f"not {split} images",
            f"re-create it with `fxbench eval RUN --split {split}`; never copy predictions between splits",
        )


def check_disjoint(val_ids: Sequence[str], test_ids: Sequence[str], where: str | Path) -> None:
    """Refuse val predictions that share image ids with the same run's test predictions."""
    shared = set(val_ids) & set(test_ids)
    if shared:
        raise ProtocolError(
            f"{where}: the val predictions share {len(shared)} image ids with the test predictions "
            f"(first: {sorted(shared)[0]}); a val input must not be a test artifact",
            "re-create predictions/val.npz with `fxbench eval RUN --split val`",
        )


def check_run_artifact(run_dir: str | Path, split: str, pred: Any, path: str | Path) -> None:
    """A run's own ``split`` artifact is really of ``split`` and (val vs test) shares no image id
    with the run's other artifact. Used wherever val predictions are chosen on (tune, ensemble,
    blend), so a test artifact copied over val.npz never passes for val.

    Raises:
        ProtocolError: see :func:`check_true_split` and :func:`check_disjoint`.
    """
    from fxbench.artifacts.predictions import read_ids_and_meta

    check_true_split(pred, split, path)
    run_dir = Path(run_dir)
    other = run_dir / "predictions" / ("test.npz" if split == "val" else "val.npz")
    if split in ("val", "test") and other.is_file():
        other_ids, _ = read_ids_and_meta(other)
        val_ids, test_ids = (pred.image_ids, other_ids) if split == "val" else (other_ids, pred.image_ids)
        check_disjoint(val_ids, test_ids, run_dir)


# --------------------------------------------------------------------------------------
# the one sealed path


def cache_scorer(bootstrap: int = 2000, seed: int = 0, subgroups: Any = None, **kwargs: Any) -> Scorer:
    """The default scorer: :func:`fxbench.evaluate.evaluate_predictions` at cache resolution.

    ``subgroups`` is an array dict, or a callable ``pred -> dict | None``; ``kwargs`` go to
    ``evaluate_predictions`` (``resolution``, ``native_masks_loader``). Box metrics are scored
    against the boxes.json of the prepared folder the predictions name, with the decision's
    ``box_score`` (default ``max``), unless ``gt_boxes`` is given.
    """

    def score(pred: Any, decision: Decision) -> dict[str, Any]:
        from fxbench.data.boxes import gt_boxes_of
        from fxbench.evaluate import evaluate_predictions

        groups = subgroups(pred) if callable(subgroups) else subgroups
        kw = {"resolution": "cache", **kwargs}
        if "gt_boxes" not in kw:
            kw["gt_boxes"] = gt_boxes_of(pred.meta)
            kw.setdefault("box_score", decision.to_dict().get("box_score") or "max")
        return evaluate_predictions(pred, decision.to_dict(), bootstrap=bootstrap, seed=seed, subgroups=groups, **kw)

    return score


def _command_str(command: str | Sequence[str]) -> str:
    return command if isinstance(command, str) else shlex.join(str(c) for c in command)


def score_under_seal(
    folder: str | Path,
    predictions: Any,
    *,
    kind: str,
    command: str | Sequence[str],
    decision_path: str | Path | None = None,
    threshold: float | None = None,
    decision: Decision | None = None,
    scorer: Scorer | None = None,
    members: Sequence[str | Path] = (),
    checkpoint: str | None = None,
    checkpoint_sha256: str | None = None,
    save_to: str | Path | None = None,
    artifact_path: str | Path | None = None,
    once: bool = False,
    extra: Mapping[str, Any] | None = None,
    metrics_kind: str | None = None,
) -> dict[str, Any]:
    """Score the test split of ``folder`` under the seal; THE one path to a test number.

    Steps, in this order: authorise the decision; only then build the test predictions (when
    ``predictions`` is a callable ``decision -> predictions``); check they are test predictions;
    score them; append the access to ``folder/test_access.log`` and to every member's log; write
    ``folder/metrics/test.json`` atomically; return the metrics (with the access counts).

    How verbs call it:

    * ``eval RUN --split test`` -- ``kind="run"``, ``decision_path`` or ``threshold`` from the
      command line, ``checkpoint="best.pt"`` (what ``--which`` scores) and its sha256, a
      callable that predicts test after authorisation, a scorer with the run's subgroups and
      resolution.
    * ``ensemble`` / ``blend`` -- ``kind="ensemble"|"blend"``, ``decision_path=DIR/decision.json``,
      ``members=[member run folders]``, ``save_to=DIR/predictions/test.npz``, ``once=True``.
    * peer scoring -- ``kind="peer"``, ``decision=`` the peer's fixed operating point (only a
      ``user-fixed`` decision may be passed as an object), ``folder`` = the peer output folder.
    * cross-validation / compare -- ``kind="cv"|"compare"``, their own ``scorer`` (it receives
      whatever ``predictions`` is or returns, plus the decision) and ``members`` = the runs the
      number is built from; a ``decision_path`` per run as for eval. Re-reading a folder's
      sealed artifact (:mod:`fxbench.select.sealed`) passes ``metrics_kind`` = the folder's own
      kind. A cv pool passes its decision object, verified through its fold runs
      (:func:`verify_pool_decision`).

    Args:
        folder: where metrics/test.json and test_access.log go (run, ensemble, blend, peer folder).
        predictions: the test predictions (a :class:`~fxbench.artifacts.predictions.Predictions`, or
            anything a custom scorer reads, e.g. box predictions; with a ``meta`` mapping its
            ``split`` must be ``test``), or a callable ``decision -> predictions`` called only
            after authorisation.
        kind: what is scored (see :data:`KINDS`); recorded in the metrics and the logs.
        command: the command line, recorded in the logs.
        decision_path / threshold / decision: the operating point; see :func:`authorize_test`.
        scorer: ``(predictions, decision) -> metrics`` (default :func:`cache_scorer`).
        members: run folders the number is built from; each gets a line in its access log.
        checkpoint, checkpoint_sha256: the checkpoint being scored (must match the decision's).
        save_to: save the predictions artifact there before scoring (its sha256 is recorded).
        artifact_path: the artifact already on disk (its sha256 is recorded).
        once: refuse when ``folder`` already has a test access (ensembles and blends).
        extra: more keys for the metrics dict.
        metrics_kind: the ``kind`` written into metrics/test.json when it is not ``kind``
            (``compare`` and ``cv`` re-read a folder's sealed artifact: its metrics keep the
            folder's own kind, the access log records the reader's).

    Returns:
        The metrics dict, also written to ``folder/metrics/test.json``, with ``split``, ``kind``,
        ``decision_source``, ``decision_sha256``, ``test_accesses`` (this folder's log lines),
        ``member_test_accesses`` ({member name: log lines}) and ``max_test_accesses`` (the
        largest count among this folder and its members).

    Raises:
        ProtocolError: the decision does not verify, the predictions are not of test, or
            ``once`` and the folder was already tested.
    """
    folder = Path(folder)
    member_dirs = [Path(m) for m in members]
    if once and read_test_access(folder):
        raise ProtocolError(
            f"{folder} already evaluated its test split; {kind}s are tested once",
            "choose a new --out folder (and a reason to look at test again)",
        )
    if decision is not None:
        if decision_path is not None or threshold is not None:
            raise UsageError("give a decision object, or a decision file / threshold, not both")
        if decision.source != "user-fixed" and not verify_pool_decision(decision, member_dirs):
            raise ProtocolError("only a user-fixed operating point may be passed without its file",
                                "pass the tuned decision as decision_path so it can be verified")
        authorised = decision
    else:
        authorised = authorize_test(folder, decision_path, threshold, checkpoint=checkpoint,
                                    checkpoint_sha256=checkpoint_sha256)
    pred = predictions(authorised) if callable(predictions) else predictions
    meta = getattr(pred, "meta", None)
    # A custom scorer's input (cv folds, compare pairs) may carry no meta: its caller checks it.
    split = meta.get("split") if isinstance(meta, Mapping) else "test"
    if split != "test":
        raise ProtocolError(f"the predictions scored under the seal are of '{split}', not test",
                            "score test predictions only (val numbers come from `fxbench eval --split val`)")
    sha = None
    if save_to is not None:
        from fxbench.artifacts.predictions import save_predictions

        sha = sha256_file(save_predictions(save_to, pred))
    elif artifact_path is not None:
        sha = sha256_file(artifact_path)
    metrics = dict((scorer or cache_scorer())(pred, authorised))
    metrics.update(extra or {})
    metrics.update(split="test", kind=metrics_kind or kind, decision_source=authorised.source,
                   decision_sha256=authorised.sha256())
    if authorised.source == "user-fixed":
        metrics["decision_label"] = "user-fixed operating point (not chosen on val)"
    if sha is not None:
        metrics["predictions_sha256"] = sha
    out = folder / "metrics" / "test.json"
    cmd, digest = _command_str(command), authorised.sha256()
    record = {"decision_source": authorised.source, "kind": kind}
    # Log before writing the metrics: a crash in between over-counts, never under-counts.
    log_test_access(folder, digest, cmd, metrics_path=out, extra={**record, "members": [str(m) for m in member_dirs]})
    for m in member_dirs:  # access counts follow the data
        log_test_access(m, digest, cmd, metrics_path=out, extra={**record, "via": str(folder.resolve())})
    metrics.update(access_counts(folder, member_dirs))
    write_json_atomic(out, metrics)
    return metrics


def verify_pool_decision(decision: Decision, members: Sequence[Path]) -> bool:
    """A cross-validation pool's operating point (``fxbench cv``) is made of its fold runs'
    tuned decisions: it verifies when its ``fold_decisions`` name exactly ``members``, and each
    member's ``decision.json`` passes :func:`authorize_test` with the recorded sha256.

    Raises:
        ProtocolError: a fold decision is missing, other than recorded, or does not verify.
    """
    recorded = (decision.model_extra or {}).get("fold_decisions")
    if not isinstance(recorded, list) or not members:
        return False
    by_run = {str(Path(r.get("run", "")).resolve()): r.get("decision_sha256") for r in recorded if isinstance(r, dict)}
    if set(by_run) != {str(m.resolve()) for m in members}:
        raise ProtocolError("the pool's decision names other fold runs than the ones pooled",
                            "pool the fold runs again with `fxbench cv`")
    for m in members:
        own = authorize_test(m, m / DECISION_FILE, None)
        if own.sha256() != by_run[str(m.resolve())]:
            raise ProtocolError(f"{m / DECISION_FILE} changed since it was pooled", "pool the fold runs again with `fxbench cv`")
    return True


def access_counts(folder: str | Path, members: Sequence[str | Path] = ()) -> dict[str, Any]:
    """``test_accesses`` of ``folder``, ``member_test_accesses`` {name: count} of its members,
    ``member_runs`` (their paths) and ``max_test_accesses`` (largest among folder and members)."""
    own = test_access_count(folder)
    names = [Path(m).name for m in members]
    # keyed by folder name; by path when two members share a name (seed_1 of two sweeps)
    per = {(n if names.count(n) == 1 else str(Path(m).resolve())): test_access_count(m)
           for n, m in zip(names, members, strict=True)}
    return {
        "test_accesses": own,
        "member_runs": [str(Path(m).resolve()) for m in members],
        "member_test_accesses": per,
        "max_test_accesses": max([own, *per.values()]),
    }


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


def member_folders(folder: str | Path) -> list[Path]:
    """The run folders a result folder's test number is built from (empty for a plain run):
    ``metrics/test.json``'s ``member_runs``, else ``members.json`` (ensemble/blend layout)."""
    folder = Path(folder)
    for path, pick in ((folder / "metrics" / "test.json", "member_runs"), (folder / "members.json", "members")):
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        value = data.get(pick) if isinstance(data, dict) else None
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list) and value:
            out = [Path(v["run"] if isinstance(v, dict) else v) for v in value if v]
            if out:
                return out
    return []


def built_from_max_accesses(folder: str | Path) -> int:
    """The largest test access count among ``folder`` and the runs it is built from (now)."""
    return max([test_access_count(folder), *(test_access_count(m) for m in member_folders(folder) if Path(m).is_dir())])
