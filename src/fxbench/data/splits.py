"""Split algorithms: which image goes to train, val and test (pure functions, unit-tested).

``grouped`` keeps duplicate groups whole and stratifies by label, ``seed`` is the old system's
per-image shuffle, ``official`` follows the archive's own split files. :func:`split_sha256` is
the split's identity recorded in the prepare report and every run.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from fxbench.data.folds import label_strata
from fxbench.errors import ConfigError
from fxbench.io import sha256_bytes

SPLIT_MODES = ("grouped", "seed", "official")
SPLITS = ("train", "val", "test")
TRAIN_RATIO = 0.70
VAL_RATIO = 0.15




def _ratio_counts(n: int, train: float = TRAIN_RATIO, val: float = VAL_RATIO) -> tuple[int, int]:
    """The seed's rounding: Python round (banker's), val trimmed when train + val > n."""
    n_train, n_val = round(n * train), round(n * val)
    if n_train + n_val > n:
        n_val = n - n_train
    return n_train, n_val


def check_ratios(train: float, val: float) -> None:
    """The seed's rule for split ratios: train > 0, val >= 0, train + val < 1 (test non-empty)."""
    if not (0.0 < train < 1.0 and 0.0 <= val < 1.0 and train + val < 1.0):
        raise ConfigError(
            f"split ratios train={train:g} val={val:g} are invalid",
            "use train > 0, val >= 0 and train + val < 1 (default 0.70 / 0.15)",
        )


def seed_split(
    rows: Sequence[tuple[str, int]], seed: int = 42, train_ratio: float = TRAIN_RATIO, val_ratio: float = VAL_RATIO
) -> dict[str, str]:
    """The seed benchmark's split, bit-identical (seed_spec 1.2).

    ``rows`` are (image_id, fractured as written in dataset.csv) in dataset.csv order. Buckets
    0 then 1 are shuffled in place by one ``random.Random(seed)``; the first round(0.70 n) go to
    train, the next round(0.15 n) to val, the rest to test (the seed's ``--train-ratio`` /
    ``--val-ratio`` change 0.70 / 0.15).
    """
    check_ratios(train_ratio, val_ratio)
    buckets: dict[int, list[str]] = {0: [], 1: []}
    for image_id, fractured in rows:
        buckets[int(fractured)].append(image_id)
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for label in (0, 1):
        items = buckets[label]
        rng.shuffle(items)
        n_train, n_val = _ratio_counts(len(items), train_ratio, val_ratio)
        for i, image_id in enumerate(items):
            out[image_id] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def _allocate_groups(
    groups: list[list[str]], rng: random.Random, train_ratio: float = TRAIN_RATIO, val_ratio: float = VAL_RATIO
) -> dict[str, str]:
    """Shuffle whole groups and fill train, then val, then test up to the ratios (default the seed's)."""
    rng.shuffle(groups)
    n = sum(len(g) for g in groups)
    n_train, n_val = _ratio_counts(n, train_ratio, val_ratio)
    out: dict[str, str] = {}
    done = 0
    for group in groups:
        split = "train" if done < n_train else "val" if done < n_train + n_val else "test"
        for image_id in group:
            out[image_id] = split
        done += len(group)
    return out


def grouped_split(
    items: Sequence[tuple[str, int, str]], seed: int = 42, train_ratio: float = TRAIN_RATIO, val_ratio: float = VAL_RATIO
) -> dict[str, str]:
    """Stratified by label, groups kept whole: ``items`` are (image_id, label, group key).

    A group with mixed labels counts as positive (its fracture must not leak). Groups are
    sorted before the seeded shuffle, so the result depends only on the data and the seed.
    """
    check_ratios(train_ratio, val_ratio)
    strata = label_strata(items)
    rng = random.Random(seed)
    out: dict[str, str] = {}
    for label in (0, 1):
        out.update(_allocate_groups(strata[label], rng, train_ratio, val_ratio))
    return out


def official_split(items: Sequence[tuple[str, int]], official: dict[str, str], seed: int = 42) -> dict[str, str]:
    """FracAtlas' official split for the images it lists (positives), plus a seeded
    70/15/15 split of the rest, stratified by label (each image its own group)."""
    out = {i: official[i] for i, _ in items if i in official}
    rest = sorted((i, lab) for i, lab in items if i not in official)
    rng = random.Random(seed)
    for label in (0, 1):
        out.update(_allocate_groups([[i] for i, lab in rest if lab == label], rng))
    return out


def split_sha256(splits: dict[str, str]) -> str:
    """sha256 of ``"".join(f"{image_id},{split}\\n")`` over image_ids in sorted order."""
    return sha256_bytes("".join(f"{i},{splits[i]}\n" for i in sorted(splits)).encode("utf-8"))


def cross_split_groups(splits: dict[str, str], groups: list[list[str]]) -> list[list[str]]:
    """The duplicate groups whose members land in more than one split."""
    return [g for g in groups if len({splits[i] for i in g if i in splits}) > 1]


def split_summary(splits: dict[str, str], labels: dict[str, int], groups: list[list[str]]) -> dict[str, Any]:
    counts = {s: 0 for s in SPLITS}
    by_label = {s: {"0": 0, "1": 0} for s in SPLITS}
    for image_id, split in splits.items():
        counts[split] += 1
        by_label[split][str(labels[image_id])] += 1
    crossing = cross_split_groups(splits, groups)
    return {
        "split_counts": counts,
        "split_label_counts": by_label,
        "split_sha256": split_sha256(splits),
        "cross_split_duplicate_groups": len(crossing),
        "cross_split_duplicate_group_members": crossing,
    }
