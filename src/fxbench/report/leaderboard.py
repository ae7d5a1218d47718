"""The leaderboard: one row per run, ensemble, blend or peer folder, read from saved files only.

A *result folder* is anything with the run layout (``metrics/``, ``predictions/``,
``decision.json`` or ``members.json``). Each row reports the test metrics when the folder has
``metrics/test.json`` (the sealed, once-evaluated numbers), otherwise its val metrics, and says
which in the ``split`` column, so a val number can never pass for a test number.

Columns: name, kind, split, n (positives), dice_pos, roc_auc_presence,
average_precision_presence (each with its 95% bootstrap CI when present), threshold, TTA,
decision source, split mode + split sha256, and how many times the test split was accessed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.errors import DataError
from fxbench.io import read_json, write_json_atomic, write_text_atomic

#: Metrics shown with their CI, in column order.
HEADLINE = ("dice_pos", "roc_auc_presence", "average_precision_presence")
_SHORT = {"dice_pos": "dice_pos", "roc_auc_presence": "AUC", "average_precision_presence": "AP"}
_MARKERS = ("metrics", "predictions", "decision.json", "members.json")


def is_result_folder(path: Path) -> bool:
    """True for a run, ensemble, blend or peer folder (the run layout)."""
    return path.is_dir() and any((path / m).exists() for m in _MARKERS)


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """Result folders named directly, or found one level below a named parent (e.g. ``runs/``).

    Raises:
        DataError: a path does not exist or holds no result folder.
    """
    found: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"not found: {p}", "pass run folders (or a folder of runs)")
        if is_result_folder(p):
            found.append(p)
            continue
        children = sorted(c for c in p.iterdir() if is_result_folder(c)) if p.is_dir() else []
        if not children:
            raise DataError(f"{p} is neither a run folder nor a folder of runs", "pass `runs/<name>` or `runs/`")
        found.extend(children)
    unique: dict[Path, Path] = {}
    for f in found:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


def read_predictions_meta(path: Path) -> dict[str, Any]:
    """Only the ``meta_json`` member of a predictions artifact (no probability maps loaded)."""
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            return dict(json.loads(str(npz["meta_json"])))
    except (OSError, KeyError, ValueError):
        return {}


def _kind(folder: Path, metrics: dict[str, Any], decision: dict[str, Any]) -> str:
    members = folder / "members.json"
    if members.is_file():
        return str(read_json(members).get("kind", "ensemble"))
    return str(metrics.get("kind") or decision.get("kind") or "run")


def _split_info(folder: Path, split: str | None, metrics: dict[str, Any]) -> tuple[str | None, str | None]:
    """(split mode, split sha256) from the metrics, run.json, the artifact meta, prepare_report."""
    run_json = read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
    meta = read_predictions_meta(folder / "predictions" / f"{split}.npz") if split else {}
    sha = metrics.get("split_sha256") or run_json.get("split_sha256") or meta.get("split_sha256")
    mode = metrics.get("split_mode") or run_json.get("split_mode") or meta.get("split_mode")
    prepared = run_json.get("prepared") or meta.get("prepared")
    if not mode and prepared and (Path(prepared) / "prepare_report.json").is_file():
        mode = read_json(Path(prepared) / "prepare_report.json").get("split_mode")
    return (str(mode) if mode else None), (str(sha) if sha else None)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def leaderboard_row(folder: str | Path) -> dict[str, Any]:
    """One leaderboard row for a result folder (test metrics if present, else val)."""
    from fxbench.select.seal import built_from_max_accesses, test_access_count

    folder = Path(folder)
    split = "test" if (folder / "metrics" / "test.json").is_file() else (
        "val" if (folder / "metrics" / "val.json").is_file() else None
    )
    metrics = read_json(folder / "metrics" / f"{split}.json") if split else {}
    decision = read_json(folder / "decision.json") if (folder / "decision.json").is_file() else {}
    mode, sha = _split_info(folder, split, metrics)
    row: dict[str, Any] = {
        "name": folder.name,
        "path": str(folder),
        "kind": _kind(folder, metrics, decision),
        "split": split,
        "n": metrics.get("num_samples", metrics.get("n")),
        "num_positive": metrics.get("num_positive"),
    }
    for key in HEADLINE:
        row[key] = _num(metrics.get(key))
        ci = metrics.get(f"{key}_ci95")
        row[f"{key}_ci95"] = [_num(ci[0]), _num(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    row.update(
        iou_pos=_num(metrics.get("iou_pos")),
        threshold=_num(metrics.get("threshold", decision.get("threshold"))),
        presence_source=metrics.get("presence_source", decision.get("presence_source")),
        tta=metrics.get("tta", decision.get("tta")),
        decision_source=metrics.get("decision_source") or decision.get("source") or metrics.get("threshold_source"),
        selected_on=decision.get("selected_on"),
        resolution=metrics.get("resolution"),
        split_mode=mode,
        split_sha256=sha,
        test_accesses=test_access_count(folder),
        max_test_accesses=built_from_max_accesses(folder),
    )
    row["boxes"] = box_columns(metrics)
    return row


#: Box metrics shown in the leaderboard's box section, with their CI.
BOX_HEADLINE = ("box_ap50", "box_ap50_95", "froc_mean")


def box_columns(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """The box section of a leaderboard row (None when the metrics have no ``boxes``)."""
    boxes = metrics.get("boxes")
    if not isinstance(boxes, dict):
        return None
    out: dict[str, Any] = {"n_gt_boxes": boxes.get("n_gt_boxes"), "n_pred_boxes": boxes.get("n_pred_boxes"),
                           "box_score": boxes.get("box_score")}
    for key in BOX_HEADLINE:
        out[key] = _num(boxes.get(key))
        ci = boxes.get(f"{key}_ci95")
        out[f"{key}_ci95"] = [_num(ci[0]), _num(ci[1])] if isinstance(ci, (list, tuple)) and len(ci) == 2 else None
    return out


def build_leaderboard(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Rows for every result folder under ``paths``: test rows first, each block by dice_pos."""
    rows = [leaderboard_row(f) for f in discover(paths)]
    rank = {"test": 0, "val": 1, None: 2}

    def key(r: dict[str, Any]) -> tuple[int, float, str]:
        dice = r["dice_pos"]
        return rank.get(r["split"], 2), -(dice if dice is not None else -math.inf), r["name"]

    return sorted(rows, key=key)


def seed_groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample SD over the seeds of each sweep (runs in ``<name>-sweep/seed_<s>``).

    Seed spread (training randomness) is reported apart from the bootstrap CIs (test-sampling
    randomness): a recipe's number is the mean over >= 3 seeds, and its spread says how far a
    single run can land from it. Only rows of one split are pooled.
    """
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        folder = Path(r["path"])
        if folder.name.startswith("seed_") and folder.parent.name.endswith("-sweep") and r["split"]:
            groups.setdefault((folder.parent.name.removesuffix("-sweep"), r["split"]), []).append(r)
    out = []
    for (name, split), members in sorted(groups.items()):
        entry: dict[str, Any] = {"recipe": name, "split": split, "seeds": len(members),
                                 "runs": [m["name"] for m in members]}
        for key in (*HEADLINE, "iou_pos"):
            vals = [m[key] for m in members if m.get(key) is not None]
            entry[f"{key}_mean"] = sum(vals) / len(vals) if vals else None
            entry[f"{key}_sd"] = (
                math.sqrt(sum((v - entry[f"{key}_mean"]) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
            )
        out.append(entry)
    return out


def _fmt(v: float | None, ci: list[float | None] | None = None) -> str:
    if v is None:
        return "-"
    text = f"{v:.3f}"
    if ci and ci[0] is not None and ci[1] is not None:
        text += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
    return text


def render_markdown(rows: list[dict[str, Any]], title: str = "fxbench leaderboard") -> str:
    """A Markdown table with a legend that names every column's definition."""
    head = ["#", "name", "kind", "split", "n (pos)", *(_SHORT[k] + " [95% CI]" for k in HEADLINE),
            "thr", "TTA", "decision", "split mode", "split sha256", "test accesses",
            "max accesses (built from)"]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(rows, start=1):
        n = f"{r['n']} ({r['num_positive']})" if r.get("n") is not None else "-"
        cells = [
            str(i), r["name"], r["kind"], r["split"] or "-", n,
            *(_fmt(r[k], r[f"{k}_ci95"]) + (" ↓" if k in (r.get("worse_than_best") or ()) else "") for k in HEADLINE),
            _fmt(r["threshold"]) if r["threshold"] is not None else "-",
            str(r["tta"] or "-"), str(r["decision_source"] or "-"), str(r["split_mode"] or "-"),
            (r["split_sha256"] or "-")[:12], str(r["test_accesses"]), str(r["max_test_accesses"]),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    spread = seed_groups(rows)
    if spread:
        lines += ["", "## Seed spread (mean ± SD over seeds)", "",
                  "| recipe | split | seeds | dice_pos | iou_pos | AUC | AP |", "|---|---|---|---|---|---|---|"]
        for g in spread:
            cells = [g["recipe"], g["split"], str(g["seeds"])]
            for key in ("dice_pos", "iou_pos", "roc_auc_presence", "average_precision_presence"):
                m, sd = g[f"{key}_mean"], g[f"{key}_sd"]
                cells.append("-" if m is None else f"{m:.3f}" + ("" if sd is None else f" ± {sd:.3f}"))
            lines.append("| " + " | ".join(cells) + " |")
    boxed = [(i, r) for i, r in enumerate(rows, start=1) if r.get("boxes")]
    if boxed:
        lines += ["", "## Boxes (detection)", "",
                  "| # | name | split | GT boxes | predicted boxes | box score | AP50 [95% CI] | AP50:95 [95% CI] | "
                  "FROC mean [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
        for i, r in boxed:
            b = r["boxes"]
            cells = [str(i), r["name"], r["split"] or "-", str(b.get("n_gt_boxes", "-")), str(b.get("n_pred_boxes", "-")),
                     str(b.get("box_score") or "-"), *(_fmt(b[k], b[f"{k}_ci95"]) for k in BOX_HEADLINE)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        lines += ["", "- **AP50 / AP50:95**: COCO box AP (pycocotools) over every image of the split, negatives "
                  "included; **FROC mean**: mean sensitivity at 0.125-8 false positives per image (docs/metrics.md)."]
    lines += [
        "",
        "- **split**: `test` rows were scored once with a decision frozen on val (see the folder's "
        "decision.json and test_access.log); `val` rows have not been tested yet and are optimistic.",
        "- **dice_pos**: per-image Dice, mean over images whose ground truth is non-empty.",
        "- **AUC / AP**: image-level presence ROC AUC (tie-aware) and step-wise average precision.",
        "- **[95% CI]**: stratified bootstrap over images (percentile interval).",
        *(["- **↓**: significantly worse than the best row of its split (paired bootstrap on the same images, "
           "Holm-adjusted p < 0.05; `report --significance`)."] if any(r.get("worse_than_best") for r in rows) else []),
        "- **test accesses**: lines in the folder's test_access.log; more than 1 means the test split was looked at "
        "repeatedly. A run's log also counts the ensembles, blends and peers scored from it.",
        "- **max accesses (built from)**: the largest test access count among the folder and the runs it is built "
        "from (an ensemble's members); for a plain run, its own count.",
        "- **decision** `user-fixed`: the operating point was not chosen on val (a --threshold, or a peer's masks).",
        "",
    ]
    return "\n".join(lines)


def write_leaderboard(rows: list[dict[str, Any]], out_dir: str | Path) -> dict[str, str]:
    """Write leaderboard.md and leaderboard.json into ``out_dir``; returns their paths."""
    out = Path(out_dir)
    md, js = out / "leaderboard.md", out / "leaderboard.json"
    write_text_atomic(md, render_markdown(rows))
    write_json_atomic(js, {"rows": rows, "seed_spread": seed_groups(rows)})
    return {"markdown": str(md), "json": str(js)}
