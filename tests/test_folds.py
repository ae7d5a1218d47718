"""Cross-validation folds: assignment, inner val, prepare --folds, fold loading."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fxbench.cli.app import app
from fxbench.data.folds import assign_folds, crossing_groups, fold_split


def _items(n: int = 400, seed: int = 0) -> tuple[list[tuple[str, int, str]], list[list[str]]]:
    """n images, ~20% positive, with duplicate groups of 2-3 images (some of mixed label)."""
    rng = random.Random(seed)
    items, groups = [], []
    k = 0
    while k < n:
        size = 1 if rng.random() < 0.85 else rng.choice((2, 3))
        members = [f"IMG{k + j:04d}.jpg" for j in range(min(size, n - k))]
        for m in members:
            items.append((m, int(rng.random() < 0.2), members[0]))
        if len(members) > 1:
            groups.append(members)
        k += len(members)
    return items, groups


@pytest.mark.parametrize("k", [2, 5, 7])
def test_every_image_in_one_fold_groups_whole_positives_balanced(k: int) -> None:
    items, groups = _items()
    fold_of = assign_folds(items, k, seed=42)
    assert sorted(fold_of) == sorted(i for i, _, _ in items)  # every image exactly once
    assert set(fold_of.values()) == set(range(k))
    assert crossing_groups(fold_of, groups) == []
    # positives per fold (images whose label is 1) within +-2 of K-way equal
    n_pos = sum(lab for _, lab, _ in items)
    per_fold = [sum(lab for i, lab, _ in items if fold_of[i] == f) for f in range(k)]
    assert all(abs(c - n_pos / k) <= 2 for c in per_fold), per_fold
    sizes = [sum(1 for i in fold_of if fold_of[i] == f) for f in range(k)]
    assert max(sizes) - min(sizes) <= 3, sizes


def test_folds_are_deterministic_from_the_seed() -> None:
    items, _ = _items()
    assert assign_folds(items, 5, 42) == assign_folds(list(reversed(items)), 5, 42)
    assert assign_folds(items, 5, 42) != assign_folds(items, 5, 7)


def test_fold_split_test_is_the_fold_and_val_is_group_aware() -> None:
    items, groups = _items()
    fold_of = assign_folds(items, 5, 42)
    tests = set()
    for f in range(5):
        parts = fold_split(items, fold_of, f, 42)
        assert {i for i, s in parts.items() if s == "test"} == {i for i, g in fold_of.items() if g == f}
        assert crossing_groups({i: ["train", "val", "test"].index(s) for i, s in parts.items()}, groups) == []
        n_val = sum(1 for s in parts.values() if s == "val")
        assert abs(n_val - 0.15 * len(items)) <= 4
        tests |= {i for i, s in parts.items() if s == "test"}
        assert parts == fold_split(items, fold_of, f, 42)
    assert len(tests) == len(items)


def _manifest(folder: Path) -> list[dict[str, str]]:
    with open(folder / "manifest.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_prepare_folds_cli_manifest_report_and_fold_loading(synth_archive: Path, tmp_path: Path) -> None:
    from fxbench.data.dataset import load_prepared

    out = tmp_path / "prep"
    runner = CliRunner()
    res = runner.invoke(app, ["prepare", "--archive", str(synth_archive), "--out", str(out), "--cache-size", "64",
                              "--workers", "1", "--folds", "4"])
    assert res.exit_code == 0, res.output
    assert "cv duplicate groups across folds" in res.output
    rows = _manifest(out)
    report = json.loads((out / "prepare_report.json").read_text())
    folds = report["folds"]
    assert folds["k"] == 4 and folds["crossing_duplicate_groups"] == 0
    assert sorted({r["fold"] for r in rows}) == ["0", "1", "2", "3"]
    assert folds["images_per_fold"] == [sum(r["fold"] == str(f) for r in rows) for f in range(4)]
    assert sum(folds["images_per_fold"]) == len(rows) == report["images"]
    n_pos = sum(int(r["label"]) for r in rows)
    assert all(abs(c - n_pos / 4) <= 2 for c in folds["positives_per_fold"])

    data = load_prepared(out, 64, splits=("train", "val", "test"), fold=2)
    assert set(data.splits["test"].image_ids) == {r["image_id"] for r in rows if r["fold"] == "2"}
    all_ids = [i for s in data.splits.values() for i in s.image_ids]
    assert sorted(all_ids) == sorted(r["image_id"] for r in rows)
    assert data.split_sha256 != load_prepared(out, 64, splits=("test",)).split_sha256

    # a rerun without --folds keeps them (nothing decoded); --folds 0 removes them
    res = runner.invoke(app, ["prepare", "--archive", str(synth_archive), "--out", str(out), "--workers", "1"])
    assert res.exit_code == 0 and "up to date" in res.output, res.output
    res = runner.invoke(app, ["prepare", "--archive", str(synth_archive), "--out", str(out), "--workers", "1",
                              "--folds", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "prepare_report.json").read_text())["folds"] is None
    assert {r["fold"] for r in _manifest(out)} == {""}
    res = runner.invoke(app, ["prepare", "--archive", str(synth_archive), "--out", str(out), "--folds", "1"])
    assert res.exit_code == 2 and "--folds must be" in res.output


def test_train_fold_needs_a_folded_prepared_folder(prepared: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--set", f"data.prepared={prepared}", "--set", "data.image_size=64",
                                   "--fold", "0", "--run-dir", str(tmp_path / "r")])
    assert res.exit_code == 3 and "no cross-validation folds" in res.output, res.output
    res = CliRunner().invoke(app, ["train", "--set", f"data.prepared={prepared}", "--fold", "0", "--folds", "all"])
    assert res.exit_code != 0
