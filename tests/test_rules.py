"""One rule for the operating point: presence-source resolution and composite metrics (issue 11)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from fxbench.artifacts.run import check_selection_metric
from fxbench.errors import ConfigError, DataError
from fxbench.evaluate.rules import (
    composite_array,
    composite_value,
    resolve_presence_source,
    selection_key,
    with_composites,
)
from fxbench.select.blend import select_rule
from fxbench.select.tune import select_grid_row

SRC = Path(__file__).resolve().parents[1] / "src" / "fxbench"


def test_auto_presence_order_and_named_sources() -> None:
    assert resolve_presence_source(["max", "head", "topk_mean"], "auto") == "head"
    assert resolve_presence_source(["topk_mean", "max"], "auto") == "max"
    assert resolve_presence_source(["blend"], "auto") == "blend"
    assert resolve_presence_source({"zeta": 1, "csv": 2}, None) == "csv"
    assert resolve_presence_source(["max", "topk_mean"], "topk_mean") == "topk_mean"
    with pytest.raises(ConfigError):  # never a silent fall-back from head to max
        resolve_presence_source(["max"], "head")
    with pytest.raises(DataError):
        resolve_presence_source([], "auto")


def test_one_nan_policy_for_composites() -> None:
    assert composite_value("auc_plus_dice_pos", {"roc_auc_presence": 0.75, "dice_pos": 0.5}) == 1.25
    assert math.isnan(composite_value("auc_plus_dice_pos", {"roc_auc_presence": float("nan"), "dice_pos": 0.5}))
    assert math.isnan(composite_value("auc_plus_dice_pos", {"dice_pos": 0.5}))
    assert math.isnan(with_composites({"roc_auc_presence": None, "dice_pos": 0.2})["auc_plus_dice_pos"])
    cols = composite_array("auc_plus_dice_pos", {"roc_auc_presence": np.array([0.5, np.nan]), "dice_pos": np.array([0.1, 0.9])})
    assert cols[0] == pytest.approx(0.6) and math.isnan(cols[1])
    assert selection_key(float("nan")) == -math.inf and selection_key(None) == -math.inf
    # tune's grid and blend's rules both let a defined score beat NaN
    grid = [{"threshold": 0.1, "min_component": 0, "dice_pos": float("nan")},
            {"threshold": 0.2, "min_component": 0, "dice_pos": 0.1}]
    assert select_grid_row(grid, "dice_pos")["threshold"] == 0.2
    assert math.isnan(select_grid_row(grid, "auc_plus_dice_pos", presence={"roc_auc_presence": float("nan")})["selection_score"])
    bgrid = {"roc_auc_presence": np.array([np.nan, 0.6]), "average_precision_presence": np.array([1.0, 0.1]),
             "dice_pos": np.array([0.9, 0.1])}
    bgrid["auc_plus_dice_pos"] = composite_array("auc_plus_dice_pos", bgrid)
    assert select_rule(bgrid, "best_joint") == 1
    # train selection: a composite that is NaN at every epoch is refused up front
    with pytest.raises(ConfigError):
        check_selection_metric("auc_plus_dice_pos", np.ones(8))


def test_grep_one_implementation_of_each_rule() -> None:
    """Presence resolution and composite arithmetic exist once, in evaluate/rules.py."""
    sources = {p: p.read_text() for p in SRC.rglob("*.py")}
    defs = [p for p, s in sources.items() if "def resolve_presence_source" in s]
    assert [p.relative_to(SRC).as_posix() for p in defs] == ["evaluate/rules.py"]
    fallback = re.compile(r'"head"\s+if\s+.*\s+else\s+"max"')
    assert [p.name for p, s in sources.items() if fallback.search(s)] == []
    adds = re.compile(r'roc_auc_presence["\']?\]?\)?\s*\+|\+\s*\w*\.?get\(["\']dice_pos|auc\s*\+\s*\w*dice')
    assert [p.name for p, s in sources.items() if adds.search(s) and p.name != "rules.py"] == []
