"""``fxbench blend``: the seed's two-model blend and three-way fusion, on probabilities.

For runs A and B (and optionally a presence classifier run C), per image:

    mask     = alpha * prob_A + (1 - alpha) * prob_B            thresholded at t
    presence = gamma * (beta * s_A + (1 - beta) * s_B) + (1 - gamma) * s_C

where every s is a saved presence *probability* from the artifacts (A: its head if it has one,
else the max pixel probability; B: max pixel probability, the seed's choices; C: its head).
The seed applied a second sigmoid to A's head probability, squeezing it into [0.5, 0.731]; here
scores are combined exactly as saved, so a weight of 1 reproduces a member bit for bit.

Grid (defaults): alpha and beta 0..1 step 0.1, t 0.05..0.95 step 0.05, gamma 0..1 step 0.05
(gamma = 1 without a classifier). The seed's three selection rules pick one grid row:

* ``best_auc``      = max (AUC, then AP, then dice_pos)
* ``best_dice_pos`` = max (dice_pos, then AUC, then AP)
* ``best_joint``    = max (AUC + dice_pos, then AP, then dice_pos)   (default; the seed's choice)

ties going to the first row in grid order (alpha, t, beta, gamma ascending). Mask parameters
(alpha, t) and presence parameters (beta, gamma) are separable -- dice_pos does not depend on
beta/gamma and AUC not on alpha/t -- so the rules differ only in how ties are broken; the seed
showed the first row with the best AUC for ``best_auc``, which could carry an arbitrary
threshold, and the extra tie-break keys fix that. All choices are made on val, written to
DIR/decision.json and applied once to test. The whole grid is saved as DIR/grid.csv.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fxbench.artifacts.decision import (
    DECISION_FILE,
    Decision,
    run_identity,
    write_decision,
    write_tune_record,
)
from fxbench.errors import DataError, UsageError
from fxbench.io import write_csv_atomic, write_json_atomic
from fxbench.select.ensemble import (
    Member,
    check_compatible,
    common_meta,
    evaluate_into,
    guard_test_once,
    load_member,
    member_identity,
    run_test_once,
)
from fxbench.select.tune import (
    GRID_METRICS,
    check_against_evaluate,
    choose_presence_threshold,
    seg_metrics_from_counts,
    threshold_counts,
    threshold_grid,
    tuning_warnings,
    unit_grid,
)

if TYPE_CHECKING:
    from fxbench.artifacts.predictions import Predictions

BLEND_RULES = ("best_auc", "best_dice_pos", "best_joint")
#: The grid column each rule ranks by first.
_RULE_SCORE = {"best_auc": "roc_auc_presence", "best_dice_pos": "dice_pos", "best_joint": "auc_plus_dice_pos"}
#: Presence key of the fused score in a blend's predictions artifact.
BLEND_SOURCE = "blend"
GRID_COLUMNS = (
    "alpha", "threshold", "beta", "gamma", *GRID_METRICS,
    "roc_auc_presence", "average_precision_presence", "auc_plus_dice_pos",
)


def blend_maps(prob_a: np.ndarray, prob_b: np.ndarray, alpha: float) -> np.ndarray:
    """alpha * A + (1 - alpha) * B in float32, stored as float16 (the artifact precision).

    The grid and the saved artifact both go through this function, so what was scored during
    the search is bit for bit what is evaluated afterwards.
    """
    a = np.float32(alpha)
    out = np.asarray(prob_a, dtype=np.float32) * a
    out += np.asarray(prob_b, dtype=np.float32) * (np.float32(1.0) - a)
    return out.astype(np.float16)


def fuse_presence(
    s_a: np.ndarray, s_b: np.ndarray, s_c: np.ndarray | None, beta: float, gamma: float = 1.0
) -> np.ndarray:
    """gamma * (beta * s_A + (1 - beta) * s_B) + (1 - gamma) * s_C on probabilities (float32 [N]).

    No sigmoid is applied: the inputs are already probabilities (fixes the seed's double sigmoid).
    """
    base = beta * np.asarray(s_a, dtype=np.float64) + (1.0 - beta) * np.asarray(s_b, dtype=np.float64)
    if s_c is None:
        if gamma != 1.0:
            raise UsageError("gamma < 1 needs a classifier run (--classifier)")
        return base.astype(np.float32)
    return (gamma * base + (1.0 - gamma) * np.asarray(s_c, dtype=np.float64)).astype(np.float32)


def _presence_of(member: Member, requested: str) -> tuple[str, np.ndarray]:
    """(resolved source, scores); ``auto`` = head if the run has one, else max (the seed's rule)."""
    from fxbench.evaluate import resolve_presence_source

    source = resolve_presence_source(member.pred, requested)
    return source, member.pred.presence[source]


def seg_rows(a: Predictions, b: Predictions, alphas: Sequence[float], thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Pixel metrics for every (alpha, threshold): one counting pass per alpha.

    Images are blended in chunks, so peak memory stays at a chunk's float32 copy rather than
    the whole split's (612 val images at 512 px would need 640 MB per blended copy).
    """
    n, chunk = a.n, max(1, (1 << 22) // max(1, a.size * a.size))
    rows = []
    for alpha in alphas:
        parts = [
            threshold_counts(blend_maps(a.probs[lo:lo + chunk], b.probs[lo:lo + chunk], float(alpha)),
                             a.masks[lo:lo + chunk], thresholds)
            for lo in range(0, n, chunk)
        ]
        pred, inter, gt = (np.concatenate([p[j] for p in parts]) for j in range(3))
        metrics = seg_metrics_from_counts(pred, inter, gt, image_ids=a.image_ids)
        for t, m in zip(thresholds, metrics, strict=True):
            rows.append({"alpha": float(alpha), "threshold": float(t), **m})
    return rows


def presence_rows(
    s_a: np.ndarray, s_b: np.ndarray, s_c: np.ndarray | None, labels: np.ndarray,
    betas: Sequence[float], gammas: Sequence[float],
) -> list[dict[str, Any]]:
    """AUC and AP (fxbench.evaluate) for every (beta, gamma)."""
    from fxbench.evaluate.metrics import average_precision, roc_auc

    rows = []
    for beta in betas:
        for gamma in gammas:
            fused = fuse_presence(s_a, s_b, s_c, float(beta), float(gamma))
            rows.append(
                {
                    "beta": float(beta),
                    "gamma": float(gamma),
                    "roc_auc_presence": roc_auc(fused, labels),
                    "average_precision_presence": average_precision(fused, labels),
                }
            )
    return rows


def _nan_low(x: np.ndarray) -> np.ndarray:
    from fxbench.evaluate.rules import selection_keys

    return selection_keys(x)


def full_grid(seg: list[dict[str, Any]], pres: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The cross product of mask rows and presence rows as columns (grid order: seg-major)."""
    ns, npr = len(seg), len(pres)
    cols: dict[str, np.ndarray] = {}
    for key in ("alpha", "threshold", *GRID_METRICS):
        cols[key] = np.repeat(np.array([r[key] for r in seg], dtype=np.float64), npr)
    for key in ("beta", "gamma", "roc_auc_presence", "average_precision_presence"):
        cols[key] = np.tile(np.array([r[key] for r in pres], dtype=np.float64), ns)
    from fxbench.evaluate.rules import composite_array

    cols["auc_plus_dice_pos"] = composite_array("auc_plus_dice_pos", cols)
    # Present columns in the seed's order: alpha, threshold, beta, gamma first.
    return {k: cols[k] for k in GRID_COLUMNS}


def rule_keys(grid: dict[str, np.ndarray], rule: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(primary, second, third) sort keys of ``rule`` per row; NaN -> -inf."""
    auc = _nan_low(grid["roc_auc_presence"])
    ap = _nan_low(grid["average_precision_presence"])
    dice = _nan_low(grid["dice_pos"])
    keys = {
        "best_auc": (auc, ap, dice),
        "best_dice_pos": (dice, auc, ap),
        "best_joint": (_nan_low(grid["auc_plus_dice_pos"]), ap, dice),
    }
    if rule not in keys:
        raise UsageError(f"unknown blend rule '{rule}'", f"use one of: {', '.join(BLEND_RULES)}")
    return keys[rule]


def tied_rows(grid: dict[str, np.ndarray], rule: str, index: int) -> list[dict[str, float]]:
    """Grid rows whose keys under ``rule`` equal those of row ``index`` (full ties; the first
    in grid order was taken)."""
    keys = rule_keys(grid, rule)
    same = np.logical_and.reduce([k == k[index] for k in keys])
    return [{c: float(grid[c][i]) for c in ("alpha", "threshold", "beta", "gamma")} for i in np.flatnonzero(same)]


def select_rule(grid: dict[str, np.ndarray], rule: str) -> int:
    """Index of the row ``rule`` picks (first in grid order on full ties)."""
    primary, second, third = rule_keys(grid, rule)
    order = -np.arange(len(primary))  # larger = earlier row, so the earliest wins full ties
    return int(np.lexsort((order, third, second, primary))[-1])


def blend_predictions(
    a: Member, b: Member, c: Member | None, *, alpha: float, beta: float, gamma: float,
    sources: dict[str, str | None], split: str, name: str,
) -> Predictions:
    """The blended artifact for ``split`` (presence key ``blend``) with frozen weights."""
    from fxbench.artifacts.predictions import Predictions

    src_a, src_b, src_c = sources["a"], sources["b"], sources["classifier"]
    assert src_a is not None and src_b is not None and (c is None or src_c is not None)
    s_c = c.pred.presence[src_c] if c is not None and src_c is not None else None
    fused = fuse_presence(a.pred.presence[src_a], b.pred.presence[src_b], s_c, beta, gamma)
    members = [a, b] + ([c] if c is not None else [])
    meta = common_meta([a, b], split, "blend", name)
    meta["members"] = [m.name for m in members]
    return Predictions(
        image_ids=list(a.pred.image_ids), probs=blend_maps(a.pred.probs, b.pred.probs, alpha), masks=a.pred.masks,
        boxes=a.pred.boxes, native_hw=a.pred.native_hw, presence={BLEND_SOURCE: fused}, labels=a.pred.labels,
        meta=meta,
    )


def _load_group(a_dir: Path, b_dir: Path, c_dir: Path | None, split: str) -> tuple[Member, Member, Member | None]:
    a, b = load_member(a_dir, split), load_member(b_dir, split)
    check_compatible([a, b])
    c = None
    if c_dir is not None:
        c = load_member(c_dir, split)
        # A classifier may run at another cache size: only the images and labels must agree.
        check_compatible([a, c], ground_truth=False)
    return a, b, c


def run_blend(
    a_dir: str | Path,
    b_dir: str | Path,
    out_dir: str | Path,
    classifier: str | Path | None = None,
    *,
    rule: str = "best_joint",
    alphas: Sequence[float] | None = None,
    betas: Sequence[float] | None = None,
    gammas: Sequence[float] | None = None,
    thresholds: Sequence[float] | None = None,
    presence_a: str = "auto",
    presence_b: str = "max",
    presence_classifier: str = "auto",
    presence_rule: str = "f1",
    bootstrap: int = 2000,
    seed: int = 0,
    test: bool = True,
    command: str | Sequence[str] = "fxbench blend",
) -> dict[str, Any]:
    """Search the blend on val, freeze it in DIR/decision.json, evaluate test once.

    Returns a summary: out, decision, best (row per rule), val and test metrics, grid size.
    """
    from fxbench.artifacts.predictions import predictions_sha256, save_predictions

    if rule not in BLEND_RULES:
        raise UsageError(f"unknown blend rule '{rule}'", f"use one of: {', '.join(BLEND_RULES)}")
    out = Path(out_dir)
    dirs = [Path(a_dir), Path(b_dir)] + ([Path(classifier)] if classifier is not None else [])
    if len({d.resolve() for d in dirs}) != len(dirs):
        raise UsageError("blend members must be different runs")
    if out.resolve() in {d.resolve() for d in dirs}:
        raise UsageError("--out must be a new folder, not one of the member runs")
    guard_test_once(out)
    alphas = list(unit_grid(0.1) if alphas is None else alphas)
    betas = list(unit_grid(0.1) if betas is None else betas)
    gammas = list(([1.0] if classifier is None else unit_grid(0.05)) if gammas is None else gammas)
    thr = list(threshold_grid() if thresholds is None else thresholds)
    for name, values in (("alpha", alphas), ("beta", betas), ("gamma", gammas)):
        if not values or any(not 0.0 <= v <= 1.0 for v in values):
            raise UsageError(f"{name} values must lie in [0, 1]")

    a, b, c = _load_group(dirs[0], dirs[1], dirs[2] if classifier is not None else None, "val")
    src_a, s_a = _presence_of(a, presence_a)
    src_b, s_b = _presence_of(b, presence_b)
    src_c, s_c = _presence_of(c, presence_classifier) if c is not None else (None, None)
    sources = {"a": src_a, "b": src_b, "classifier": src_c}

    seg = seg_rows(a.pred, b.pred, alphas, thr)
    pres = presence_rows(s_a, s_b, s_c, a.pred.labels, betas, gammas)
    grid = full_grid(seg, pres)
    n_rows = len(grid["alpha"])
    write_csv_atomic(
        out / "grid.csv",
        [{k: float(grid[k][i]) for k in GRID_COLUMNS} for i in range(n_rows)],
        GRID_COLUMNS,
    )
    best = {r: {k: float(grid[k][i]) for k in GRID_COLUMNS} for r in BLEND_RULES for i in [select_rule(grid, r)]}
    chosen = best[rule]
    index = select_rule(grid, rule)
    seg_at_alpha = [r for r in seg if r["alpha"] == chosen["alpha"]]
    warnings = tuning_warnings(seg_at_alpha, {**chosen, "tied": tied_rows(grid, rule, index),
                                              "selection_score": float(grid[_RULE_SCORE[rule]][index])})
    alpha, t, beta, gamma = chosen["alpha"], chosen["threshold"], chosen["beta"], chosen["gamma"]

    val = blend_predictions(a, b, c, alpha=alpha, beta=beta, gamma=gamma, sources=sources, split="val", name=out.name)
    val_path = save_predictions(out / "predictions" / "val.npz", val)
    p_thr, _ = choose_presence_threshold(val.presence[BLEND_SOURCE], val.labels, presence_rule)
    members = {"a": a.name, "b": b.name, "classifier": c.name if c is not None else None}
    decision = Decision(
        threshold=t,
        presence_source=BLEND_SOURCE,
        presence_threshold=p_thr,
        min_component=0,
        tta=val.meta.get("tta"),
        selected_on="val",
        selection_metric=rule,
        presence_rule=presence_rule,
        val_predictions_sha256=predictions_sha256(val_path),
        source="tune",
        kind="blend",
        rule=rule,
        alpha=alpha,
        beta=beta,
        gamma=gamma if c is not None else None,
        presence_sources=sources,
        members=members,
        val_score=chosen[_RULE_SCORE[rule]],
        member_runs=[member_identity(m) for m in (a, b, c) if m is not None],
        ties=warnings["ties"],
        degenerate=warnings["degenerate"],
        run=run_identity(out),
    ).sealed()
    check_against_evaluate(val, decision, chosen)
    write_decision(out / DECISION_FILE, decision)
    write_tune_record(out, decision)
    search = {
        "alphas": alphas, "thresholds": thr, "betas": betas, "gammas": gammas,
        "presence_sources": sources, "num_rows": n_rows,
    }
    write_json_atomic(out / "blend.json", {"rule": rule, "search_space": search, "best": best, "chosen": chosen})
    members_doc: dict[str, Any] = {
        "kind": "blend",
        "rule": "mask = alpha*A + (1-alpha)*B; presence = gamma*(beta*sA + (1-beta)*sB) + (1-gamma)*sC",
        "members": {k: m.record() for k, m in (("a", a), ("b", b), ("classifier", c)) if m is not None},
    }
    write_json_atomic(out / "members.json", members_doc)
    extra = {"kind": "blend", "members": members, "alpha": alpha, "beta": beta, "gamma": decision.gamma}  # type: ignore[attr-defined]
    val_metrics, _ = evaluate_into(out, "val", val, decision, bootstrap=bootstrap, seed=seed, extra=extra)

    test_metrics = None
    if test:
        ta, tb, tc = _load_group(dirs[0], dirs[1], dirs[2] if classifier is not None else None, "test")
        for vm, tm in ((a, ta), (b, tb), (c, tc)):
            if vm is not None and tm is not None and vm.pred.meta.get("tta") != tm.pred.meta.get("tta"):
                raise DataError(
                    f"{vm.name}: val predicted with tta={vm.pred.meta.get('tta')}, test with tta={tm.pred.meta.get('tta')}",
                    "re-predict test with the val TTA; a decision holds for one TTA",
                )
        members_doc["test_members"] = {k: m.record() for k, m in (("a", ta), ("b", tb), ("classifier", tc)) if m is not None}
        write_json_atomic(out / "members.json", members_doc)
        test_pred = blend_predictions(
            ta, tb, tc, alpha=alpha, beta=beta, gamma=gamma, sources=sources, split="test", name=out.name
        )
        test_metrics = run_test_once(out, test_pred, bootstrap=bootstrap, seed=seed, command=command,
                                     members=dirs, kind="blend", extra=extra)
    return {
        "out": str(out),
        "decision": decision.to_dict(),
        "best": best,
        "num_rows": n_rows,
        "val": val_metrics,
        "test": test_metrics,
    }
