"""``fxbench cv``: pool the out-of-fold test predictions of K fold runs into one artifact.

Each fold run (``train --fold k``) was tuned on its own inner val and scored once on its test
fold under the seal, at its own operating point (pixel threshold t_k, min_component m_k,
presence source and threshold). The pool is one ordinary result folder:

    OUT/predictions/test.npz  every image once (the union of the K test folds)
    OUT/decision.json         threshold 0.5, presence source ``cv``, presence threshold 0.5
    OUT/cv_pool.json          the fold runs, their decisions, per-fold metrics, mean and SD
    OUT/metrics/test.json     the pooled metrics (with CIs over all images)

To score every image at *its own fold's* frozen operating point with one decision, each fold's
pixel probabilities are mapped by the monotone piecewise-linear map that sends t_k to 0.5
(p -> 0.5 p / t_k below t_k, 0.5 + 0.5 (p - t_k) / (1 - t_k) above), after zeroing the components
below m_k (as native scoring does); presence scores likewise with the fold's presence
threshold. Binarised masks and presence decisions are exactly the fold's (checked after the
float16/float32 cast and fixed where rounding crossed 0.5). Ranking metrics of the pool (AUC,
AP) mix K models, each with its own calibration: read them beside the per-fold mean and SD.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.artifacts.predictions import Predictions
from fxbench.errors import DataError
from fxbench.evaluate import HEADLINE_METRICS
from fxbench.evaluate.metrics import remove_small_components, threshold_probs
from fxbench.select.compare import CompareInput
from fxbench.select.sealed import POOL_FILE

#: Presence source name of the pooled artifact (the aligned, frozen presence score of each fold).
POOLED_SOURCE = "cv"


def align_to_half(values: np.ndarray, threshold: float, dtype: Any) -> np.ndarray:
    """Monotone map of scores in [0, 1] sending ``threshold`` to 0.5, cast to ``dtype``.

    ``v >= threshold`` holds exactly when the result is ``>= 0.5`` (cast rounding is repaired).

    Raises:
        DataError: values outside [0, 1] (not probabilities).
    """
    v = np.asarray(values)
    if v.size and (float(v.min()) < 0.0 or float(v.max()) > 1.0):
        raise DataError("cv pooling needs scores in [0, 1]", "pool fold runs that predict probabilities")
    t = float(threshold)
    above = threshold_probs(v, t)
    x = v.astype(np.float64)
    low = 0.5 * x / t if t > 0 else np.zeros_like(x)
    high = 0.5 + 0.5 * (x - t) / (1.0 - t) if t < 1 else np.ones_like(x)
    out = np.where(above, high, low).astype(dtype)
    half = np.asarray(0.5, dtype=dtype)
    below_half = np.nextafter(half, np.asarray(0.0, dtype=dtype))
    out = np.where(above & (out < half), half, out)
    out = np.where(~above & (out >= half), below_half, out)
    return out.astype(dtype, copy=False)


def _fold_probs(inp: CompareInput) -> np.ndarray:
    """A fold's pixel probabilities with small components removed and t_k mapped to 0.5."""
    d = inp.decision
    probs = inp.pred.probs
    if int(d["min_component"]) > 1:
        probs = probs.copy()
        for i in range(probs.shape[0]):
            binary = threshold_probs(probs[i], d["threshold"])
            dropped = binary & ~remove_small_components(binary, int(d["min_component"]))
            probs[i][dropped] = 0
    return align_to_half(probs, d["threshold"], np.float16)


def pool_folds(inputs: Sequence[CompareInput], name: str) -> Predictions:
    """One test artifact over all images of the K sealed fold artifacts (decision: 0.5 / 0.5).

    Raises:
        DataError: folds overlap, cache sizes differ, or fewer than two folds.
    """
    if len(inputs) < 2:
        raise DataError("cv pools at least two fold runs", "pass every fold run: fxbench cv RUN-cv/fold_*")
    seen: dict[str, str] = {}
    for inp in inputs:
        for i in inp.pred.image_ids:
            if i in seen:
                raise DataError(f"image {i} is in the test part of both {seen[i]} and {inp.name}",
                                "pool the fold runs of one `prepare --folds` assignment, each fold once")
            seen[i] = inp.name
    sizes = {inp.pred.size for inp in inputs}
    if len(sizes) > 1:
        raise DataError(f"fold runs predict at different cache sizes {sorted(sizes)}", "train every fold at one data.image_size")
    order = np.argsort(np.array(list(seen)), kind="stable")
    ids = np.array(list(seen))[order].tolist()
    fold_index = np.concatenate([np.full(inp.pred.n, k) for k, inp in enumerate(inputs)])[order]
    cat = lambda arrays: np.concatenate(arrays)[order]  # noqa: E731
    presence = cat([align_to_half(inp.presence_scores(), inp.decision["presence_threshold"], np.float32)
                    for inp in inputs])
    first = inputs[0].pred.meta
    meta = {
        "split": "test", "kind": "cv", "run": name, "tta": first.get("tta"), "prepared": first.get("prepared"),
        "cache_sha256": first.get("cache_sha256"), "image_size": first.get("image_size"),
        "fold_runs": [str(inp.folder) for inp in inputs],
        "fold_of_image": [int(f) for f in fold_index],
        "presence_sources": {POOLED_SOURCE: "each fold's frozen presence score, its threshold mapped to 0.5"},
    }
    return Predictions(
        image_ids=ids, probs=cat([_fold_probs(inp) for inp in inputs]), masks=cat([inp.pred.masks for inp in inputs]),
        boxes=cat([inp.pred.boxes for inp in inputs]), native_hw=cat([inp.pred.native_hw for inp in inputs]),
        presence={POOLED_SOURCE: presence}, labels=cat([inp.pred.labels for inp in inputs]), meta=meta,
    )


def per_fold_summary(fold_metrics: Sequence[dict[str, Any]], metrics: Sequence[str] = HEADLINE_METRICS) -> dict[str, Any]:
    """Mean and sample SD (ddof=1) over the folds' own sealed test metrics, per metric."""
    out: dict[str, Any] = {}
    for m in metrics:
        vals = [float(f[m]) for f in fold_metrics if f.get(m) is not None and np.isfinite(float(f[m]))]
        out[m] = {
            "values": vals,
            "mean": float(np.mean(vals)) if vals else None,
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else None,
        }
    return out


def pooled_decision() -> dict[str, Any]:
    """The pooled artifact's operating point: every fold's frozen decision, mapped to 0.5."""
    return {"threshold": 0.5, "presence_source": POOLED_SOURCE, "presence_threshold": 0.5, "min_component": 0}


def check_folds_complete(inputs: Sequence[CompareInput], pooled: Predictions) -> list[str]:
    """Notes when the pool does not cover the fold runs' whole prepared folder."""
    prepared = pooled.meta.get("prepared")
    manifest = Path(prepared) / "manifest.csv" if prepared else None
    if manifest is None or not manifest.is_file():
        return ["the prepared folder is not at hand: coverage of every image not checked"]
    import csv

    with open(manifest, newline="", encoding="utf-8") as fh:
        ids = {r["image_id"] for r in csv.DictReader(fh)}
    missing = ids - set(pooled.image_ids)
    if missing:
        raise DataError(f"the {len(inputs)} fold runs cover {len(ids) - len(missing)} of {len(ids)} images "
                        f"(e.g. {sorted(missing)[0]} is in no test fold)", "pass every fold run of the sweep")
    return []


def run_cv(
    fold_runs: Sequence[str | Path],
    out: str | Path,
    command: str | Sequence[str],
    *,
    bootstrap: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pool the sealed test artifacts of ``fold_runs`` into ``out`` and score the pool once.

    The pooled score is one test access of ``out`` and of each fold run (its members).
    Returns ``{"out", "pooled": metrics, "per_fold": {metric: values, mean, sd}, "folds": [...]}``.
    """
    from fxbench.errors import ProtocolError
    from fxbench.io import read_json, write_json_atomic
    from fxbench.select.seal import read_test_access
    from fxbench.select.sealed import check_sealed, fold_input, score_pool

    out = Path(out)
    if read_test_access(out):
        raise ProtocolError(f"{out} already holds a scored pool; a pool is tested once",
                            "choose a new --out folder (and a reason to look at test again)")
    runs = [Path(r) for r in fold_runs]
    if len({r.resolve() for r in runs}) != len(runs):
        raise DataError("a fold run is named twice", "pass each fold run once")
    for r in runs:  # refuse before logging any access
        check_sealed(r)
    inputs = [fold_input(r) for r in runs]
    pooled = pool_folds(inputs, out.name)
    notes = check_folds_complete(inputs, pooled)
    fold_metrics = [dict(read_json(r / "metrics" / "test.json")) for r in runs]
    per_fold = per_fold_summary(fold_metrics)
    folds = [{"run": str(inp.folder), "n": inp.pred.n, "num_positive": int(inp.pred.labels.sum()),
              "decision": inp.decision, "decision_sha256": inp.decision_sha256} for inp in inputs]
    notes.append("pooled AUC/AP rank the scores of K models, each with its own calibration: "
                 "read them beside the per-fold mean and SD")
    write_json_atomic(out / POOL_FILE, {"kind": "cv", "runs": [str(r.resolve()) for r in runs], "folds": folds,
                                        "per_fold": per_fold, "notes": notes})
    metrics = score_pool(out, pooled, pooled_decision(), inputs, command, bootstrap=bootstrap, seed=seed,
                         extra={"run": out.name, "per_fold": per_fold, "folds": len(runs), "cv_notes": notes})
    return {"out": str(out), "pooled": metrics, "per_fold": per_fold, "folds": folds}
