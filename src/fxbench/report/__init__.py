"""fxbench.report: leaderboards (Markdown + JSON) and PNG plots from saved artifacts.

Reads result folders only (metrics JSON, predictions artifacts, history.csv, decision.json,
test_access.log) and never imports torch or a model. Entry point: :func:`build_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_report", "make_report"]


def _decision_for(folder: Path, split: str) -> dict[str, Any]:
    """The operating point the shown metrics were computed at (metrics JSON first)."""
    from fxbench.io import read_json

    metrics_path = folder / "metrics" / f"{split}.json"
    src: dict[str, Any] = read_json(metrics_path) if metrics_path.is_file() else {}
    if src.get("threshold") is None and (folder / "decision.json").is_file():
        src = read_json(folder / "decision.json")
    return {
        "threshold": float(src.get("threshold") or 0.5),
        "presence_source": src.get("presence_source") or "auto",
        "presence_threshold": float(src.get("presence_threshold") or 0.5),
        "min_component": int(src.get("min_component") or 0),
    }


def _cache_images(pred: Any, prepared: Path | None, memo: dict[Path, Any]) -> Any:
    """Cache images [N,S,S] aligned with ``pred``, or None when the cache is not at hand/differs."""
    import numpy as np

    prep = prepared or (Path(pred.meta["prepared"]) if pred.meta.get("prepared") else None)
    if prep is None:
        return None
    from fxbench.data.cache import cache_filename

    path = prep / "cache" / cache_filename(pred.size, str(pred.meta.get("resize") or "letterbox"))
    if not path.is_file():
        return None
    if path not in memo:
        from fxbench.data.cache import load_cache
        from fxbench.errors import DataError

        try:
            memo[path] = load_cache(path)
        except DataError:
            memo[path] = None
    cache = memo[path]
    if cache is None:
        return None
    want = pred.meta.get("cache_sha256")
    if want and want != cache.sha256:
        return None  # another cache of the same size: its images would not match the masks
    pos = {i: k for k, i in enumerate(cache.image_ids)}
    if not all(i in pos for i in pred.image_ids):
        return None
    return cache.images[np.array([pos[i] for i in pred.image_ids])]


def _plot_entry(row: dict[str, Any], pdir: Path, prepared: Path | None, cases: int,
                memo: dict[Path, Any], curves: dict[str, list[Any]]) -> dict[str, str]:
    from fxbench.artifacts.predictions import load_predictions
    from fxbench.evaluate import resolve_presence_source, with_derived_presence
    from fxbench.report import plots

    folder, split, name = Path(row["path"]), row["split"], row["name"]
    files: dict[str, str] = {}
    if (folder / "history.csv").is_file():
        p = plots.plot_training(folder / "history.csv", pdir / "training.png", title=f"{name}: training")
        if p:
            files["training"] = str(p)
    grid = folder / "tune" / "grid.csv"
    if grid.is_file():
        chosen = _decision_for(folder, "val")["threshold"] if (folder / "decision.json").is_file() else None
        p = plots.plot_threshold_curve(grid, pdir / "threshold.png", chosen, title=f"{name}: val metrics vs threshold")
        if p:
            files["threshold"] = str(p)
    art = folder / "predictions" / f"{split}.npz" if split else None
    if art is None or not art.is_file():
        return files
    decision = _decision_for(folder, split)
    # pred_area exists at the decision's pixel threshold only (never stored in the artifact)
    pred = with_derived_presence(load_predictions(art), float(decision["threshold"]), int(decision.get("min_component") or 0))
    source = resolve_presence_source(pred, decision["presence_source"])
    decision["presence_source"] = source
    entry = [(name, pred.presence[source], pred.labels)]
    curves.setdefault(split, []).append(entry[0])
    tag = f"{name} ({split})"
    files["roc"] = str(plots.plot_roc(entry, pdir / "roc.png", title=f"{tag}: presence ROC"))
    files["pr"] = str(plots.plot_pr(entry, pdir / "pr.png", title=f"{tag}: precision-recall"))
    files["calibration"] = str(plots.plot_calibration(entry, pdir / "calibration.png", title=f"{tag}: calibration"))
    images = _cache_images(pred, prepared, memo)
    for which in ("best", "worst"):
        p = plots.plot_overlays(pred, decision, pdir / f"cases_{which}.png", which=which, k=cases, images=images)
        if p:
            files[f"cases_{which}"] = str(p)
    return files


def build_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    prepared: str | Path | None = None,
    plots: bool = True,
    cases: int = 8,
) -> dict[str, Any]:
    """Leaderboard + plots for the result folders under ``paths`` into ``out_dir``.

    Writes leaderboard.{md,json}, report.md (leaderboard + plot links), report.json and
    ``plots/<name>/*.png`` plus split-wide ``roc_<split>.png``/``pr_<split>.png``/
    ``calibration_<split>.png`` comparing all entries. Returns the report.json content.
    """
    from fxbench.io import write_json_atomic, write_text_atomic
    from fxbench.report import plots as plot_mod
    from fxbench.report.leaderboard import build_leaderboard, render_markdown, write_leaderboard

    out = Path(out_dir)
    rows = build_leaderboard(paths)
    files: dict[str, Any] = dict(write_leaderboard(rows, out))
    per_entry: dict[str, dict[str, str]] = {}
    if plots:
        memo: dict[Path, Any] = {}
        curves: dict[str, list[Any]] = {}
        used: set[str] = set()
        for row in rows:
            key = row["name"]
            n = 2
            while key in used:  # two folders with one name (runs/a/x and runs/b/x)
                key, n = f"{row['name']}-{n}", n + 1
            used.add(key)
            per_entry[key] = _plot_entry(row, out / "plots" / key, Path(prepared) if prepared else None,
                                         cases, memo, curves)
        for split, entries in curves.items():
            files[f"roc_{split}"] = str(plot_mod.plot_roc(entries, out / f"roc_{split}.png", f"Presence ROC ({split})"))
            files[f"pr_{split}"] = str(plot_mod.plot_pr(entries, out / f"pr_{split}.png", f"Precision-recall ({split})"))
            files[f"calibration_{split}"] = str(
                plot_mod.plot_calibration(entries, out / f"calibration_{split}.png", title=f"Calibration ({split})")
            )
    md = [render_markdown(rows, "fxbench report")]
    shared = [(k, v) for k, v in files.items() if k.startswith(("roc_", "pr_", "calibration_"))]
    if shared:
        md.append("## Comparisons\n")
        md += [f"![{k}]({Path(v).relative_to(out).as_posix()})" for k, v in shared]
        md.append("")
    for name, entry in per_entry.items():
        if entry:
            md.append(f"## {name}\n")
            md += [f"![{k}]({Path(v).relative_to(out).as_posix()})" for k, v in entry.items()]
            md.append("")
    write_text_atomic(out / "report.md", "\n".join(md) + "\n")
    files["report_markdown"] = str(out / "report.md")
    summary = {"rows": rows, "files": files, "plots": per_entry}
    write_json_atomic(out / "report.json", summary)
    return summary


#: Alias kept for callers written against the first name.
make_report = build_report
