"""Cross-validation folds: every image in one test fold, duplicate groups kept whole.

``prepare --folds K`` writes each image's fold (0..K-1) to the manifest's ``fold`` column and a
``folds`` section to the report. A fold run (``data.fold=k``) reads the same manifest through
:func:`fold_split`: test = fold k; val = an inner, group-aware, label-stratified part of the
other K-1 folds (:data:`INNER_VAL_SHARE` of all images, the size of the ordinary val split);
train = the rest. Pure functions of (image id, label, duplicate group, seed); no I/O.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fxbench.errors import ConfigError, DataError
from fxbench.io import sha256_bytes

#: Inner val of a fold run, as a share of all images (per label stratum), taken from its K-1 training folds.
INNER_VAL_SHARE = 0.15
MIN_FOLDS, MAX_FOLDS = 2, 20

#: (image_id, label 0/1, duplicate group key)
Item = tuple[str, int, str]


def check_folds(k: int) -> int:
    """``k`` if it is a usable fold count, else :class:`ConfigError`."""
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_FOLDS <= k <= MAX_FOLDS:
        raise ConfigError(f"--folds must be an integer in {MIN_FOLDS}..{MAX_FOLDS}, got {k!r}", "e.g. --folds 5")
    return k


def label_strata(items: Sequence[Item]) -> dict[int, list[list[str]]]:
    """Whole duplicate groups per label stratum, in sorted group-key order, members sorted.

    A group with any positive member is positive (its fracture must not leak). Shared by the
    grouped split and the folds.
    """
    by_group: dict[str, list[tuple[str, int]]] = {}
    for image_id, label, group in items:
        by_group.setdefault(group, []).append((image_id, int(label)))
    strata: dict[int, list[list[str]]] = {0: [], 1: []}
    for key in sorted(by_group):
        members = by_group[key]
        strata[max(lab for _, lab in members)].append(sorted(i for i, _ in members))
    return strata


def assign_folds(items: Sequence[Item], k: int, seed: int = 42) -> dict[str, int]:
    """Fold index 0..k-1 of every image: stratified by label, duplicate groups whole.

    Groups with a positive member are placed first, then the all-negative groups (one
    ``random.Random(seed)``). Within each, groups are shuffled, then stably sorted largest
    first, and each goes to the fold holding the fewest images of the group's stratum
    (positive images for positive groups, negative images otherwise; ties: fewest images
    overall, then the lowest index). With groups of one or two images every fold's count of
    each label is within one or two of ``n / k``.
    """
    check_folds(k)
    labels = {i: int(lab) for i, lab, _ in items}
    strata = label_strata(items)
    rng = random.Random(seed)
    fold_of: dict[str, int] = {}
    count = {0: [0] * k, 1: [0] * k}  # images of each label per fold
    for label in (1, 0):
        groups = strata[label]
        rng.shuffle(groups)
        groups.sort(key=len, reverse=True)
        for group in groups:
            f = min(range(k), key=lambda j: (count[label][j], count[0][j] + count[1][j], j))
            for image_id in group:
                fold_of[image_id] = f
                count[labels[image_id]][f] += 1
    return fold_of


def fold_split(items: Sequence[Item], fold_of: dict[str, int], fold: int, seed: int = 42) -> dict[str, str]:
    """train / val / test of one fold run: test = fold ``fold``, val = inner part of the others.

    The inner val is chosen per label stratum among the groups outside the test fold, shuffled
    by ``random.Random(seed * 1000 + fold)``, taking whole groups until it holds
    round(:data:`INNER_VAL_SHARE` x stratum size) images. Everything else is train.
    """
    folds = sorted(set(fold_of.values()))
    if fold not in folds:
        raise DataError(f"fold {fold} does not exist: the prepared folder has folds {folds[0]}..{folds[-1]}",
                        f"use data.fold in 0..{folds[-1]}")
    out = {image_id: "test" for image_id, f in fold_of.items() if f == fold}
    rng = random.Random(seed * 1000 + fold)
    strata = label_strata([it for it in items if it[0] in fold_of])
    for label in (0, 1):
        groups = strata[label]
        want = round(INNER_VAL_SHARE * sum(len(g) for g in groups))
        rest = [g for g in groups if fold_of[g[0]] != fold]
        rng.shuffle(rest)
        taken = 0
        for group in rest:
            split = "val" if taken < want else "train"
            taken += len(group) if split == "val" else 0
            for image_id in group:
                out[image_id] = split
    return out


def fold_sha256(fold_of: dict[str, int]) -> str:
    """sha256 of ``"".join(f"{image_id},{fold}\\n")`` over image ids in sorted order."""
    return sha256_bytes("".join(f"{i},{fold_of[i]}\n" for i in sorted(fold_of)).encode("utf-8"))


def crossing_groups(fold_of: dict[str, int], groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """Duplicate groups whose members are in more than one fold (0 by construction)."""
    return [list(g) for g in groups if len({fold_of[i] for i in g if i in fold_of}) > 1]


def fold_summary(items: Sequence[Item], fold_of: dict[str, int], k: int, seed: int,
                 dup_groups: Sequence[Sequence[str]]) -> dict[str, Any]:
    """The ``folds`` section of prepare_report.json: counts per fold and of each fold run's parts."""
    labels = {i: int(lab) for i, lab, _ in items}
    per_fold = []
    for f in range(k):
        parts = fold_split(items, fold_of, f, seed)
        row: dict[str, Any] = {"fold": f}
        for part in ("test", "val", "train"):
            ids = [i for i, s in parts.items() if s == part]
            row[part] = len(ids)
            row[f"{part}_positives"] = sum(labels[i] for i in ids)
        per_fold.append(row)
    crossing = crossing_groups(fold_of, dup_groups)
    return {
        "k": k,
        "seed": seed,
        "stratified_by": "image label",
        "grouped_by": "duplicate_group (pixel-identical images stay in one fold)",
        "inner_val_share": INNER_VAL_SHARE,
        "fold_sha256": fold_sha256(fold_of),
        "images_per_fold": [row["test"] for row in per_fold],
        "positives_per_fold": [row["test_positives"] for row in per_fold],
        "crossing_duplicate_groups": len(crossing),
        "crossing_duplicate_group_members": crossing,
        "per_fold": per_fold,
    }


def manifest_items(rows: Sequence[dict[str, str]]) -> tuple[list[Item], dict[str, int]]:
    """(items, fold_of) from manifest rows with a non-empty ``fold`` column.

    Raises:
        DataError: the manifest has no folds (prepared without ``--folds``).
    """
    if not rows or not str(rows[0].get("fold", "")).strip():
        raise DataError("the prepared folder has no cross-validation folds",
                        "run `fxbench prepare --folds 5` on it (nothing is decoded again)")
    items = [(r["image_id"], int(r["label"]), r.get("duplicate_group") or r["image_id"]) for r in rows]
    try:
        fold_of = {r["image_id"]: int(r["fold"]) for r in rows}
    except ValueError as err:
        raise DataError(f"manifest.csv has a malformed fold value ({err})", "re-run `fxbench prepare --folds K`") from err
    return items, fold_of


def prepared_folds(prepared_dir: str | Path) -> dict[str, Any] | None:
    """The ``folds`` section of a prepared folder's report, or None (no folds, or no report)."""
    try:
        report = json.loads((Path(prepared_dir) / "prepare_report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    folds = report.get("folds") if isinstance(report, dict) else None
    return folds if isinstance(folds, dict) and isinstance(folds.get("k"), int) else None


def fold_rows(prepared_dir: str | Path, rows: Sequence[dict[str, str]], fold: int) -> list[dict[str, str]]:
    """Manifest ``rows`` with ``split`` replaced by fold ``fold``'s train / val / test.

    The inner-val seed is the folds' seed from prepare_report.json. Raises :class:`DataError`
    when the folder has no folds or no such fold.
    """
    info = prepared_folds(prepared_dir)
    items, fold_of = manifest_items(rows)
    if info is None:
        raise DataError(f"{prepared_dir}/prepare_report.json has no folds section",
                        "run `fxbench prepare --folds K` on the folder")
    parts = fold_split(items, fold_of, fold, int(info["seed"]))
    return [{**r, "split": parts[r["image_id"]]} for r in rows]
