"""Marks for ``report --significance``: rows significantly worse than the best row.

Within each split block of the leaderboard (test rows, val rows), the best row is the first
one (highest dice_pos). Every other row predicted on the same images is compared with it by
:func:`fxbench.select.compare.compare_inputs` (paired bootstrap, Holm over the block's rows);
a row gets ``worse_than_best`` = the headline columns where it is significantly worse. Rows
on other images get ``None`` (not comparable). For test rows this reads sealed test artifacts,
so it is logged as a test access of each compared folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fxbench.errors import FxbenchError

#: Leaderboard columns that can be marked.
MARKED = ("dice_pos", "roc_auc_presence", "average_precision_presence")


def mark_worse_than_best(rows: list[dict[str, Any]], command: str | Sequence[str], *,
                         n_resamples: int = 2000, seed: int = 0) -> list[str]:
    """Set ``row["worse_than_best"]`` (list of columns, or None) on each row; return notes."""
    from fxbench.select.compare import compare_inputs
    from fxbench.select.sealed import compare_folders

    notes: list[str] = []
    for split in ("test", "val"):
        block = [r for r in rows if r.get("split") == split]
        for r in block:
            r["worse_than_best"] = None
        if len(block) < 2:
            continue
        best = block[0]
        best["worse_than_best"] = []
        ids = _ids(Path(best["path"]), split)
        same = [r for r in block[1:] if _ids(Path(r["path"]), split) == ids]
        if len(same) < len(block) - 1:
            notes.append(f"{split}: {len(block) - 1 - len(same)} row(s) are on other images than the best row "
                         "and are not compared")
        if not same:
            continue
        try:
            inputs = compare_folders([best["path"], *(r["path"] for r in same)], split, command)
            result = compare_inputs(inputs, n_resamples=n_resamples, seed=seed, metrics=("dice_pos",
                                    "roc_auc_presence", "average_precision_presence"))
        except FxbenchError as err:
            notes.append(f"{split}: no significance marks ({err})")
            continue
        for r, comp in zip(same, result["comparisons"], strict=True):
            r["worse_than_best"] = [m for m in MARKED if comp["metrics"].get(m, {}).get("worse")]
    return notes


def _ids(folder: Path, split: str) -> frozenset[str] | None:
    import numpy as np

    path = folder / "predictions" / f"{split}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return frozenset(str(s) for s in npz["image_ids"].tolist())
    except (OSError, KeyError, ValueError):
        return None
