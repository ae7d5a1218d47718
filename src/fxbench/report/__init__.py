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


def _case_images(pred: Any, prepared: Path | None, memo: dict[Path, Any]) -> tuple[Any, str]:
    """(loader, where) for the X-rays behind ``pred``'s case panels.

    ``loader(indices)`` gives the cache images [k,S',S'] of those artifact rows, from the
    prepared cache of the artifact's size when there is one, else from a cache of another size
    (the panel resizes it); a cache is used only when it holds every image and its letterbox
    boxes, scaled to the artifact's size, match the artifact's (so a re-prepared folder with
    another geometry is never drawn under these masks). ``loader`` is None when no cache fits;
    ``where`` then says why (it goes into the panel title), else names the cache.
    """
    import numpy as np

    from fxbench.data.cache import available_caches, cache_image_ids, load_cache
    from fxbench.errors import DataError

    prep = prepared or (Path(pred.meta["prepared"]) if pred.meta.get("prepared") else None)
    if prep is None:
        return None, "the artifact names no prepared folder; pass --prepared"
    geometry = str(pred.meta.get("resize") or "letterbox")
    try:
        caches = available_caches(prep, geometry)
    except DataError:
        caches = {}
    if not caches:
        return None, f"no {geometry} image cache in {prep}; pass --prepared"
    order = sorted(caches, key=lambda s: (s != pred.size, s < pred.size, abs(s - pred.size)))
    for size in order:
        path = caches[size]
        if path not in memo:
            try:
                memo[path] = {i: k for k, i in enumerate(cache_image_ids(path))}
            except DataError:
                memo[path] = None
        pos = memo[path]
        if pos is None or not all(i in pos for i in pred.image_ids):
            continue
        rows = np.array([pos[i] for i in pred.image_ids])

        def load(idx: list[int], path: Path = path, rows: np.ndarray = rows, size: int = size) -> Any:
            want = rows[np.asarray(idx, dtype=np.int64)]
            try:
                cache = load_cache(path, rows=want, checksum=False)
            except DataError:
                return None
            at = {r: k for k, r in enumerate(np.unique(want))}
            pick = np.array([at[r] for r in want])
            scaled = cache.boxes[pick].astype(np.float64) * (pred.size / size)
            if np.abs(scaled - pred.boxes[np.asarray(idx)]).max(initial=0) > max(1.5, pred.size / size + 0.5):
                return None  # another geometry (re-prepared differently): not these masks' images
            return cache.images[pick]

        return load, f"cache {path.name}"
    return None, f"no cache in {prep} holds these images; pass --prepared"


def _plot_entry(row: dict[str, Any], pdir: Path, prepared: Path | None, cases: int,
                memo: dict[Path, Any], curves: dict[str, list[Any]],
                values: dict[str, Any]) -> dict[str, str]:
    """Draw one entry's plots; what each plot shows (threshold, cases) goes into ``values``."""
    from fxbench.artifacts.predictions import load_predictions
    from fxbench.evaluate import resolve_presence_source, with_derived_presence
    from fxbench.io import read_json
    from fxbench.report import plots

    folder, split, name = Path(row["path"]), row["split"], row["name"]
    files: dict[str, str] = {}
    if (folder / "history.csv").is_file():
        info = read_json(folder / "run.json") if (folder / "run.json").is_file() else {}
        best = info.get("best_epoch")
        p = plots.plot_training(folder / "history.csv", pdir / "training.png", title=f"{name}: training",
                                selection_metric=info.get("selection_metric"),
                                best_epoch=int(best) if best is not None else None)
        if p:
            files["training"] = str(p)
            values["training"] = {"selection_metric": info.get("selection_metric"), "best_epoch": best}
    grid = folder / "tune" / "grid.csv"
    if grid.is_file():
        # The line is decision.json's threshold, never an eval's (metrics/val.json may be at the default).
        dec = read_json(folder / "decision.json") if (folder / "decision.json").is_file() else {}
        chosen = float(dec["threshold"]) if dec.get("threshold") is not None else None
        mc = int(dec.get("min_component") or 0)
        p = plots.plot_threshold_curve(grid, pdir / "threshold.png", chosen, title=f"{name}: val metrics vs threshold",
                                       min_component=mc)
        if p:
            files["threshold"] = str(p)
            values["threshold"] = {"threshold": chosen, "min_component": mc,
                                   "from": str(folder / "decision.json") if dec else None}
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
    tag = f"{name} ({split}, presence {source})"
    files["roc"] = str(plots.plot_roc(entry, pdir / "roc.png", title=f"{tag}: ROC"))
    files["pr"] = str(plots.plot_pr(entry, pdir / "pr.png", title=f"{tag}: precision-recall"))
    files["calibration"] = str(plots.plot_calibration(entry, pdir / "calibration.png", title=f"{tag}: calibration"))
    loader, where = _case_images(pred, prepared, memo)
    drawn: dict[str, bool] = {}

    def images(idx: list[int]) -> Any:
        got = loader(idx) if loader else None
        drawn["xray"] = got is not None
        return got

    for which in ("best", "worst"):
        res = plots.plot_overlays(pred, decision, pdir / f"cases_{which}.png", which=which, k=cases,
                                  images=images, image_note=where)
        if res:
            path, shown = res
            files[f"cases_{which}"] = str(path)
            values[f"cases_{which}"] = {"threshold": decision["threshold"], "split": split,
                                        "background": f"X-ray ({where})" if drawn.get("xray")
                                        else f"probability map ({where})",
                                        "cases": shown}
    return files


def build_report(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    *,
    prepared: str | Path | None = None,
    plots: bool = True,
    cases: int = 8,
    significance: bool = False,
    command: str = "fxbench report",
) -> dict[str, Any]:
    """Leaderboard + plots for the result folders under ``paths`` into ``out_dir``.

    Writes leaderboard.{md,json}, report.md (leaderboard + plot links), report.json and
    ``plots/<name>/*.png`` plus split-wide ``roc_<split>.png``/``pr_<split>.png``/
    ``calibration_<split>.png`` comparing all entries. Returns the report.json content; its
    ``plot_values`` say per entry what the plots draw (the threshold line, from decision.json;
    the cases shown, their Dice and whether the background is the X-ray or the probability map).

    ``significance``: mark rows significantly worse than the best row of their split
    (:mod:`fxbench.report.significance`; on test rows a logged test access of each).
    """
    from fxbench.io import write_json_atomic, write_text_atomic
    from fxbench.report import plots as plot_mod
    from fxbench.report.leaderboard import build_leaderboard, render_markdown, write_leaderboard

    out = Path(out_dir)
    rows = build_leaderboard(paths)
    notes: list[str] = []
    if significance:
        from fxbench.report.significance import mark_worse_than_best

        notes = mark_worse_than_best(rows, command)
    files: dict[str, Any] = dict(write_leaderboard(rows, out))
    per_entry: dict[str, dict[str, str]] = {}
    values: dict[str, dict[str, Any]] = {}
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
            values[key] = {}
            per_entry[key] = _plot_entry(row, out / "plots" / key, Path(prepared) if prepared else None,
                                         cases, memo, curves, values[key])
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
    summary = {"rows": rows, "files": files, "plots": per_entry, "plot_values": values, "notes": notes}
    write_json_atomic(out / "report.json", summary)
    return summary


#: Alias kept for callers written against the first name.
make_report = build_report
