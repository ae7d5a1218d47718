"""``fxbench ensemble``: average saved predictions of N runs, choose on val, test once.

The ensemble of runs r_1..r_M on a split is the mean of their probability maps and of each
presence score source they all have: the arithmetic mean (the seed's), or a weighted mean
sum_m w_m p_m with weights w_m >= 0 summing to 1 -- given (``--weights``) or chosen on val over
a small simplex grid (``--weight-step``) by the selection metric, and recorded in the decision.
One more source, ``mean_map_max`` (the maximum of the averaged map), is the seed's ensemble
presence score. Members must be predictions of the same images from the same cache (ids,
ground truth and cache/split hashes are checked).

The output folder has the layout of a run, so ``report`` and ``eval``'s seal treat it alike::

    DIR/members.json  DIR/predictions/{val,test}.npz  DIR/decision.json  DIR/tune/*.csv
    DIR/metrics/{val,test}.json  DIR/test_access.log

This module and :mod:`fxbench.select.blend` share the folder helpers defined here
(:func:`load_member`, :func:`evaluate_into`, :func:`guard_test_once`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fxbench.artifacts.decision import DECISION_FILE, Decision
from fxbench.errors import DataError, ProtocolError, UsageError
from fxbench.io import write_csv_atomic, write_json_atomic
from fxbench.select.seal import (
    cache_scorer,
    check_run_artifact,
    read_test_access,
    score_under_seal,
)

if TYPE_CHECKING:
    from fxbench.artifacts.predictions import Predictions

@dataclass
class Member:
    """One input run of an ensemble or blend: its folder, name and loaded predictions."""

    run_dir: Path
    name: str
    pred: Predictions
    sha256: str

    def record(self) -> dict[str, Any]:
        """What members.json says about this member."""
        return {
            "run": str(self.run_dir.resolve()),
            "name": self.name,
            "split": self.pred.meta.get("split"),
            "predictions_sha256": self.sha256,
            "tta": self.pred.meta.get("tta"),
            "checkpoint_sha256": self.pred.meta.get("checkpoint_sha256"),
            "presence_sources": sorted(self.pred.presence),
        }


def load_member(run_dir: str | Path, split: str) -> Member:
    """Load ``RUN/predictions/<split>.npz`` with its sha256 (DataError with a fix when missing).

    The member's own artifact must really be of ``split`` (:func:`check_true_split`), and a val
    artifact must share no image id with the run's test artifact: a test artifact copied over
    val.npz is refused (ProtocolError, exit 4).
    """
    from fxbench.artifacts.predictions import load_predictions, predictions_sha256

    run_dir = Path(run_dir)
    path = run_dir / "predictions" / f"{split}.npz"
    if not path.is_file():
        raise DataError(
            f"{run_dir} has no {split} predictions ({path})",
            f"run `fxbench eval {run_dir} --split val` (test predictions are written by the ensemble/blend verbs)",
        )
    sha = predictions_sha256(path)
    pred = load_predictions(path)
    check_run_artifact(run_dir, split, pred, path)
    return Member(run_dir=run_dir, name=run_dir.name, pred=pred, sha256=sha)


def member_identity(m: Member) -> dict[str, Any]:
    """What a decision records about a member: name, folder, val predictions and checkpoint sha256."""
    return {"name": m.name, "path": str(m.run_dir.resolve()), "val_predictions_sha256": m.sha256,
            "checkpoint": m.pred.meta.get("checkpoint"), "checkpoint_sha256": m.pred.meta.get("checkpoint_sha256")}


def check_compatible(members: Sequence[Member], *, ground_truth: bool = True) -> None:
    """Members must describe the same images (same ids, order and, by default, ground truth).

    Raises:
        DataError: naming the first member that differs and how.
    """
    ref = members[0]
    for m in members[1:]:
        where = f"{m.name} vs {ref.name}"
        if m.pred.image_ids != ref.pred.image_ids:
            if set(m.pred.image_ids) != set(ref.pred.image_ids):
                raise DataError(f"{where}: predictions cover different images", "predict all members on the same prepared split")
            raise DataError(f"{where}: same images in a different order", "re-predict with the current fxbench")
        if not np.array_equal(m.pred.labels, ref.pred.labels):
            raise DataError(f"{where}: image labels differ", "members must come from the same prepared folder")
        for key in ("split_sha256", "cache_sha256") if ground_truth else ("split_sha256",):
            a, b = m.pred.meta.get(key), ref.pred.meta.get(key)
            if a and b and a != b:
                raise DataError(f"{where}: {key} differs", "members must use the same prepared split and cache")
        if ground_truth:
            if m.pred.size != ref.pred.size:
                raise DataError(
                    f"{where}: cache size {m.pred.size} vs {ref.pred.size}",
                    "ensemble runs trained at the same data.cache_size",
                )
            if not np.array_equal(m.pred.masks, ref.pred.masks):
                raise DataError(f"{where}: ground-truth masks differ", "members must use the same prepared cache")


def common_meta(members: Sequence[Member], split: str, kind: str, name: str) -> dict[str, Any]:
    ttas = sorted({str(m.pred.meta.get("tta")) for m in members})
    ref = members[0].pred.meta
    return {
        "split": split,
        "tta": ttas[0] if len(ttas) == 1 else "mixed:" + ",".join(ttas),
        "run": name,
        "kind": kind,
        "members": [m.name for m in members],
        "cache_sha256": ref.get("cache_sha256"),
        "split_sha256": ref.get("split_sha256"),
        "prepared": ref.get("prepared"),
    }


def normalize_weights(weights: Sequence[float] | None, n: int) -> np.ndarray:
    """Ensemble weights as float64 [n] summing to 1; None -> equal weights.

    Raises:
        UsageError: wrong count, a negative or non-finite weight, or all weights 0.
    """
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray([float(v) for v in weights], dtype=np.float64)
    if w.shape != (n,):
        raise UsageError(f"{len(w)} weights for {n} runs", "give one --weights value per run, in the runs' order")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise UsageError(f"ensemble weights must be >= 0 and not all 0, got {list(w)}", "e.g. --weights 0.5,0.3,0.2")
    return w / w.sum()


def weight_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of ``n`` members on the simplex lattice of ``step`` (weights k*step,
    sum 1), equal weights first when they lie on it. ``step`` must divide 1 (0.5, 0.25, 0.1...)."""
    k = round(1.0 / step) if step > 0 else 0
    if k < 1 or abs(k * step - 1.0) > 1e-9:
        raise UsageError(f"--weight-step {step} must divide 1 (e.g. 0.5, 0.25, 0.1)")
    points: list[tuple[float, ...]] = []

    def rec(prefix: list[int], left: int) -> None:
        if len(prefix) == n - 1:
            points.append(tuple(round(c / k, 6) for c in [*prefix, left]))
            return
        for c in range(left, -1, -1):
            rec([*prefix, c], left - c)

    rec([], k)
    if len(points) > 2000:
        raise UsageError(f"{len(points)} weight vectors for {n} runs at step {step}", "use a coarser --weight-step")
    equal = tuple(round(1.0 / n, 6) for _ in range(n))
    return sorted(points, key=lambda p: p != equal)


def average_predictions(
    members: Sequence[Member], split: str, name: str = "ensemble", weights: Sequence[float] | None = None
) -> Predictions:
    """(Weighted) mean probability map and presence scores (sources every member has) of ``members``.

    ``weights`` (one per member, >= 0; normalised to sum 1; default equal) give
    ``sum_m w_m * p_m``. The mean is taken in float32 and stored as float16 like any artifact.
    ``mean_map_max`` (the maximum of the mean map over pixels) is added as the seed's ensemble
    presence score.
    """
    from fxbench.artifacts.predictions import Predictions

    if not members:
        raise UsageError("an ensemble needs at least one run")
    check_compatible(members)
    w = normalize_weights(weights, len(members))
    acc = np.zeros(members[0].pred.probs.shape, dtype=np.float32)
    common = set.intersection(*(set(m.pred.presence) for m in members))
    if weights is None:  # the seed's arithmetic mean (kept bit for bit)
        for m in members:
            acc += m.pred.probs  # float16 -> float32 accumulation, one member at a time (memory)
        acc /= len(members)
        presence = {s: np.mean([m.pred.presence[s] for m in members], axis=0) for s in sorted(common)}
    else:
        for m, wm in zip(members, w, strict=True):
            if wm > 0:
                acc += np.float32(wm) * m.pred.probs.astype(np.float32)
        presence = {
            s: np.sum([wm * m.pred.presence[s].astype(np.float64) for m, wm in zip(members, w, strict=True)], axis=0)
            for s in sorted(common)
        }
    ref = members[0].pred
    probs16 = acc.astype(np.float16)
    presence["mean_map_max"] = probs16.reshape(len(probs16), -1).max(axis=1).astype(np.float32)
    return Predictions(
        image_ids=list(ref.image_ids), probs=probs16, masks=ref.masks, boxes=ref.boxes,
        native_hw=ref.native_hw, presence=presence, labels=ref.labels,
        meta=common_meta(members, split, "ensemble", name),
    )


# --------------------------------------------------------------------------------------
# output folder helpers (shared with blend)


def subgroups_for(pred: Predictions) -> dict[str, np.ndarray] | None:
    """Subgroup flags in artifact order from the prepared manifest named in the meta, if any.

    Absent or unreadable metadata only drops the subgroup table; it never blocks a result.
    """
    from fxbench.evaluate.subgroups import metadata_from_records

    prepared = pred.meta.get("prepared")
    manifest = Path(prepared) / "manifest.csv" if prepared else None
    if manifest is None or not manifest.is_file():
        return None
    with open(manifest, newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    try:
        return metadata_from_records(pred.image_ids, records) or None
    except DataError:
        return None


def evaluate_into(
    out_dir: Path,
    split: str,
    pred: Predictions,
    decision: Decision,
    *,
    bootstrap: int,
    seed: int,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], Path]:
    """Score saved val ``pred`` with ``decision`` via fxbench.evaluate; write DIR/metrics/<split>.json.

    Test numbers never come from here: they go through :func:`fxbench.select.seal.score_under_seal`.
    """
    from fxbench.artifacts.predictions import predictions_sha256
    from fxbench.evaluate import evaluate_predictions

    if split == "test":
        raise ProtocolError("internal: test metrics are written only by fxbench.select.seal.score_under_seal")

    from fxbench.data.boxes import gt_boxes_of

    metrics = evaluate_predictions(
        pred, decision.to_dict(), bootstrap=bootstrap, seed=seed, subgroups=subgroups_for(pred), resolution="cache",
        gt_boxes=gt_boxes_of(pred.meta), box_score=decision.to_dict().get("box_score") or "max",
    )
    metrics.update(
        split=split,
        run=out_dir.name,
        tta=pred.meta.get("tta"),
        decision_source=decision.source,
        predictions_sha256=predictions_sha256(out_dir / "predictions" / f"{split}.npz"),
        **(extra or {}),
    )
    path = out_dir / "metrics" / f"{split}.json"
    write_json_atomic(path, metrics)
    return metrics, path


def guard_test_once(out_dir: Path) -> None:
    """An ensemble/blend folder sees the test split once; a second run must pick a new folder."""
    if read_test_access(out_dir):
        raise ProtocolError(
            f"{out_dir} already evaluated its test split; ensembles and blends are tested once",
            "choose a new --out folder (and a reason to look at test again)",
        )


def run_test_once(
    out_dir: Path,
    pred_test: Predictions,
    *,
    bootstrap: int,
    seed: int,
    command: str | Sequence[str],
    members: Sequence[str | Path] = (),
    kind: str = "ensemble",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply DIR/decision.json to the test predictions under the seal (once); every member's
    access log gets the access too."""
    return score_under_seal(
        out_dir, pred_test, kind=kind, command=command, decision_path=out_dir / DECISION_FILE,
        scorer=cache_scorer(bootstrap, seed, subgroups=subgroups_for), members=members,
        save_to=out_dir / "predictions" / "test.npz", once=True, extra=extra,
    )


def choose_weights(
    members: Sequence[Member], step: float, tune_kw: dict[str, Any]
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Weights on :func:`weight_grid` with the best val selection score (each point is tuned
    as the final ensemble is). Returns (weights [M], one row per grid point)."""
    from fxbench.select.tune import tune_predictions

    names = [m.name for m in members]
    equal = np.full(len(members), 1.0 / len(members))
    rows: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    best_w = equal
    for point in weight_grid(len(members), step):
        pred = average_predictions(members, "val", "weights", point)
        res = tune_predictions(pred, val_sha256=None, **tune_kw)
        score = float(res.best["selection_score"])
        rows.append({**{f"w_{n}": v for n, v in zip(names, point, strict=True)},
                     "threshold": res.decision.threshold, "selection_score": score})
        key = (-np.inf if np.isnan(score) else score, -float(np.abs(np.asarray(point) - equal).sum()))
        if best is None or key > best:
            best, best_w = key, np.asarray(point, dtype=np.float64)
    return best_w, rows


# --------------------------------------------------------------------------------------
# the verb


def run_ensemble(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    metric: str = "dice_pos",
    thresholds: Sequence[float] | None = None,
    min_components: Sequence[int] = (0,),
    presence_rule: str = "f1",
    bootstrap: int = 2000,
    seed: int = 0,
    test: bool = True,
    command: str | Sequence[str] = "fxbench ensemble",
    weights: Sequence[float] | None = None,
    weight_step: float | None = None,
) -> dict[str, Any]:
    """Build the ensemble of ``run_dirs`` into ``out_dir``: val mean -> tune -> (test once).

    ``weights``: fixed member weights (normalised); ``weight_step``: choose the weights on val
    over :func:`weight_grid` instead, by the tune selection score (ties: the grid point nearest
    equal weights, then grid order); the grid is written to ``DIR/tune/weights.csv``. Neither:
    the arithmetic mean. The weights are recorded in the decision (``weights``, ``weight_rule``).

    Returns a summary dict: out, decision, val (metrics), test (metrics or None), members.

    Raises:
        ProtocolError: ``out_dir`` already evaluated its test split.
        DataError: a member lacks predictions or members disagree on images/ground truth.
    """
    from fxbench.artifacts.predictions import predictions_sha256, save_predictions
    from fxbench.select.tune import tune_predictions, write_tune_outputs

    out = Path(out_dir)
    runs = [Path(r) for r in run_dirs]
    if len({r.resolve() for r in runs}) != len(runs):
        raise UsageError("the same run is listed twice", "list each run once")
    if out.resolve() in {r.resolve() for r in runs}:
        raise UsageError("--out must be a new folder, not one of the member runs")
    guard_test_once(out)

    if weights is not None and weight_step is not None:
        raise UsageError("--weights and --weight-step exclude each other", "fix the weights, or let val choose them")
    val_members = [load_member(r, "val") for r in runs]
    names = [m.name for m in val_members]
    tune_kw: dict[str, Any] = dict(metric=metric, thresholds=thresholds, min_components=min_components,
                                   presence_rule=presence_rule)
    if weight_step is not None:
        w, weight_rows = choose_weights(val_members, weight_step, tune_kw)
        write_csv_atomic(out / "tune" / "weights.csv", weight_rows, list(weight_rows[0]))
        rule = f"val grid, step {weight_step:g}, by {metric}"
    elif weights is not None:
        w, rule = normalize_weights(weights, len(runs)), "user-fixed"
    else:
        w, rule = None, "equal"
    chosen = None if w is None else [float(v) for v in w]
    val = average_predictions(val_members, "val", out.name, chosen)
    val_path = save_predictions(out / "predictions" / "val.npz", val)
    weight_info = {"weights": dict(zip(names, chosen or [round(1 / len(names), 6)] * len(names), strict=True)),
                   "weight_rule": rule}
    result = tune_predictions(
        val, val_sha256=predictions_sha256(val_path), **tune_kw,
        extra={"kind": "ensemble", "members": names, **weight_info,
               "member_runs": [member_identity(m) for m in val_members]},
    )
    write_tune_outputs(out, result)
    members_doc: dict[str, Any] = {
        "kind": "ensemble",
        "rule": ("mean" if w is None else "weighted mean") + " of probability maps and of each common presence source",
        "members": [m.record() for m in val_members],
        **weight_info,
    }
    write_json_atomic(out / "members.json", members_doc)
    extra = {"kind": "ensemble", "members": [m.name for m in val_members]}
    val_metrics, _ = evaluate_into(out, "val", val, result.decision, bootstrap=bootstrap, seed=seed, extra=extra)

    test_metrics = None
    if test:
        test_members = [load_member(r, "test") for r in runs]
        for vm, tm in zip(val_members, test_members, strict=True):
            if vm.pred.meta.get("tta") != tm.pred.meta.get("tta"):
                raise DataError(
                    f"{vm.name}: val predicted with tta={vm.pred.meta.get('tta')}, test with tta={tm.pred.meta.get('tta')}",
                    "re-predict test with the val TTA; a decision holds for one TTA",
                )
        members_doc["test_members"] = [m.record() for m in test_members]
        write_json_atomic(out / "members.json", members_doc)
        test_pred = average_predictions(test_members, "test", out.name, chosen)
        test_metrics = run_test_once(out, test_pred, bootstrap=bootstrap, seed=seed, command=command,
                                     members=runs, kind="ensemble", extra=extra)
    return {
        "out": str(out),
        "decision": result.decision.to_dict(),
        "tune": result,
        "val": val_metrics,
        "test": test_metrics,
        "members": [m.name for m in val_members],
    }
