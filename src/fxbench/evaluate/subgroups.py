"""Subgroup tables over FracAtlas metadata flags (body region, hardware, view).

A subgroup is the set of images whose 0/1 flag is 1; flags overlap (an image can be both
``hand`` and ``frontal``), so the rows do not partition the split. Each row reports the same
definitions as the whole-split metrics, recomputed on the subgroup's images, and warns when the
subgroup has too few positives for a stable estimate.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fxbench.errors import DataError
from fxbench.evaluate.bootstrap import bootstrap_ci, point_estimates
from fxbench.evaluate.metrics import PerImageStats

#: manifest.csv metadata columns reported as subgroups, in table order.
SUBGROUP_COLUMNS: tuple[str, ...] = (
    "hand", "leg", "hip", "shoulder", "mixed", "hardware", "frontal", "lateral", "oblique",
)
#: Below this many positive images a subgroup row carries a warning.
MIN_POSITIVES = 30
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f", ""}


def _flag(value: Any, column: str, image_id: str) -> int:
    text = str(value).strip().lower()
    if text in _TRUE:
        return 1
    if text in _FALSE:
        return 0
    raise DataError(f"metadata column '{column}' of image {image_id} is '{value}', expected 0/1")


def metadata_from_records(
    image_ids: Sequence[str],
    records: Iterable[Mapping[str, Any]],
    columns: Sequence[str] = SUBGROUP_COLUMNS,
) -> dict[str, np.ndarray]:
    """Align manifest rows (mappings with ``image_id`` and 0/1 columns, e.g. from csv.DictReader)
    to ``image_ids``: dict column -> uint8 [N]. Columns absent from every record are left out.

    Raises:
        DataError: an image id has no record, or a flag is not 0/1.
    """
    by_id = {str(r["image_id"]): r for r in records}
    missing = [i for i in image_ids if i not in by_id]
    if missing:
        raise DataError(f"{len(missing)} image ids have no metadata row (first: {missing[0]})",
                        "use the manifest.csv of the prepared folder the predictions came from")
    present = [c for c in columns if any(c in by_id[i] for i in image_ids)]
    return {
        c: np.array([_flag(by_id[i].get(c, 0), c, i) for i in image_ids], dtype=np.uint8)
        for c in present
    }


def subgroup_table(
    per_image_stats: PerImageStats,
    metadata: Mapping[str, np.ndarray],
    n_resamples: int = 0,
    seed: int = 0,
    min_positives: int = MIN_POSITIVES,
) -> dict[str, dict[str, Any]]:
    """Metrics per subgroup: ``{name: row}`` in the order of ``metadata``.

    Args:
        per_image_stats: the split's per-image table (with presence scores for AUC/AP).
        metadata: subgroup name -> 0/1 array [N] aligned with the table's images.
        n_resamples: > 0 adds ``dice_pos_ci95`` and ``roc_auc_presence_ci95`` (stratified
            bootstrap within the subgroup, same ``seed``).
        min_positives: rows with fewer positive images get a ``warning``.

    Row keys: n, n_pos, n_neg, dice_pos, iou_pos, lesion_recall (if lesions were computed),
    roc_auc_presence, average_precision_presence (if presence scores are present), the CIs, and
    ``warning`` (only when there is something to warn about).
    """
    stats = per_image_stats
    table: dict[str, dict[str, Any]] = {}
    wanted = ["dice_pos", "iou_pos", "lesion_recall", "roc_auc_presence", "average_precision_presence"]
    for name, flags in metadata.items():
        f = np.asarray(flags).reshape(-1)
        if f.shape != (stats.n,):
            raise DataError(f"subgroup '{name}' has {f.size} flags for {stats.n} images")
        if not np.isin(f, (0, 1)).all():
            raise DataError(f"subgroup '{name}' flags must be 0/1")
        sub = stats.take(f.astype(bool))
        n_pos = int(sub.labels.sum())
        row: dict[str, Any] = {"n": sub.n, "n_pos": n_pos, "n_neg": sub.n - n_pos}
        if sub.n:
            row.update(point_estimates(sub, wanted))
            if n_resamples > 0:
                row.update(bootstrap_ci(sub, n_resamples, seed,
                                        [m for m in ("dice_pos", "roc_auc_presence") if m in row]))
        if n_pos < min_positives:
            row["warning"] = f"only {n_pos} positive images (< {min_positives}): estimates are unstable"
        table[name] = row
    return table
