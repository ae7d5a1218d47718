"""Split procedures: the seed's exact algorithm, grouped, official (fxbench.data.prepare)."""

from __future__ import annotations

import random
from collections import Counter

from fxbench.data.splits import (
    cross_split_groups,
    grouped_split,
    official_split,
    seed_split,
    split_sha256,
)


def _rows(n_neg: int, n_pos: int, seed: int = 7) -> list[tuple[str, int]]:
    """dataset.csv-like rows in a fixed, interleaved order."""
    labels = [0] * n_neg + [1] * n_pos
    random.Random(seed).shuffle(labels)
    return [(f"IMG{i:07d}.jpg", lab) for i, lab in enumerate(labels)]


def _counts(splits: dict[str, str], rows: list[tuple[str, int]] | None = None, label: int | None = None) -> tuple[int, int, int]:
    keep = {i for i, lab in rows if lab == label} if rows is not None else set(splits)
    c = Counter(s for i, s in splits.items() if i in keep)
    return c["train"], c["val"], c["test"]


def test_seed_split_counts_for_3366_negatives_717_positives() -> None:
    rows = _rows(3366, 717)
    splits = seed_split(rows, 42)
    # bucket 0: round(2356.2)=2356, round(504.9)=505, 505; bucket 1: round(501.9)=502, round(107.55)=108, 107
    assert _counts(splits, rows, 0) == (2356, 505, 505)
    assert _counts(splits, rows, 1) == (502, 108, 107)
    assert _counts(splits) == (2858, 613, 612)


def test_seed_split_counts_for_the_real_buckets_3367_716() -> None:
    rows = _rows(3367, 716)
    splits = seed_split(rows, 42)
    assert _counts(splits, rows, 0) == (2357, 505, 505)
    assert _counts(splits, rows, 1) == (501, 107, 108)
    assert _counts(splits) == (2858, 612, 613)


def test_seed_split_is_the_documented_procedure() -> None:
    """Re-implement seed_spec 1.2 literally and compare membership image by image."""
    rows = _rows(120, 37, seed=3)
    rng = random.Random(42)
    expected = {}
    for label in (0, 1):
        bucket = [r for r in rows if r[1] == label]  # dataset.csv order
        rng.shuffle(bucket)
        n = len(bucket)
        n_train, n_val = round(n * 0.70), round(n * 0.15)
        if n_train + n_val > n:
            n_val = n - n_train
        for k, (image_id, _) in enumerate(bucket):
            expected[image_id] = "train" if k < n_train else "val" if k < n_train + n_val else "test"
    assert seed_split(rows, 42) == expected


def test_seed_split_is_deterministic_and_seed_dependent() -> None:
    rows = _rows(300, 60)
    a, b = seed_split(rows, 42), seed_split(list(rows), 42)
    assert a == b and split_sha256(a) == split_sha256(b)
    assert seed_split(rows, 43) != a
    # row order matters (the seed keeps dataset.csv order)
    assert seed_split(list(reversed(rows)), 42) != a


def test_split_sha256_definition() -> None:
    import hashlib

    splits = {"b.jpg": "val", "a.jpg": "train"}
    assert split_sha256(splits) == hashlib.sha256(b"a.jpg,train\nb.jpg,val\n").hexdigest()


def test_grouped_split_keeps_groups_together_and_stratifies() -> None:
    items = []
    for g in range(150):
        size = 3 if g % 10 == 0 else 1
        label = 1 if g % 5 == 0 else 0
        items += [(f"g{g:03d}_{k}.jpg", label, f"g{g:03d}") for k in range(size)]
    splits = grouped_split(items, 42)
    assert set(splits) == {i for i, _, _ in items}
    groups: dict[str, set[str]] = {}
    for image_id, _, key in items:
        groups.setdefault(key, set()).add(splits[image_id])
    assert all(len(s) == 1 for s in groups.values())
    members = [[i for i, _, k in items if k == key] for key in groups]
    assert cross_split_groups(splits, members) == []
    pos = [i for i, lab, _ in items if lab]
    c = Counter(splits[i] for i in pos)
    assert abs(c["train"] - 0.7 * len(pos)) <= 3 and c["val"] > 0 and c["test"] > 0
    assert grouped_split(list(reversed(items)), 42) == splits  # input order does not matter


def test_grouped_split_mixed_label_group_counts_as_positive() -> None:
    items = [("a.jpg", 0, "a"), ("b.jpg", 1, "a")] + [(f"n{i}.jpg", 0, f"n{i}") for i in range(20)]
    splits = grouped_split(items, 1)
    assert splits["a.jpg"] == splits["b.jpg"]


def test_official_split_keeps_listed_images_and_splits_the_rest() -> None:
    items = [(f"p{i}.jpg", 1) for i in range(10)] + [(f"n{i:03d}.jpg", 0) for i in range(100)]
    official = {f"p{i}.jpg": ("train" if i < 8 else "val" if i < 9 else "test") for i in range(10)}
    splits = official_split(items, official, 42)
    assert all(splits[i] == s for i, s in official.items())
    neg = Counter(splits[f"n{i:03d}.jpg"] for i in range(100))
    assert (neg["train"], neg["val"], neg["test"]) == (70, 15, 15)
    assert official_split(items, official, 42) == splits
    assert official_split(items, official, 0) != splits


def test_cross_split_groups() -> None:
    splits = {"a": "train", "b": "test", "c": "val", "d": "val"}
    assert cross_split_groups(splits, [["a", "b"], ["c", "d"]]) == [["a", "b"]]
