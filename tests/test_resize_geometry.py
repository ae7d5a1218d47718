"""``data.resize: letterbox | stretch`` end to end (issue 13): geometry, caches, round trip, scoring."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fxbench.artifacts.predictions import Predictions
from fxbench.cli.app import app
from fxbench.data.cache import (
    cache_filename,
    check_cache_geometry,
    find_cache,
    letterbox,
    load_cache,
    stretch,
    to_cache_frame,
)
from fxbench.data.dataset import load_prepared
from fxbench.errors import DataError
from fxbench.evaluate import evaluate_predictions, to_native

# A native 96 x 48 image (H x W) with a fracture box on a 2-pixel lattice, so that both
# geometries map it to whole cache pixels at S = 48 (letterbox: 1/2 on both axes; stretch: 1/2
# vertically, 1 horizontally). Bilinear upsampling by 2 of a box then thresholded at 0.5
# gives the box back exactly (edge pixels get weight 0.75, those outside 0.25).
H, W, S = 96, 48, 48
ROWS, COLS = slice(16, 48), slice(8, 40)


def _native() -> tuple[np.ndarray, np.ndarray]:
    image = (np.arange(H * W).reshape(H, W) % 251).astype(np.uint8)
    mask = np.zeros((H, W), bool)
    mask[ROWS, COLS] = True
    return image, mask


@pytest.mark.parametrize(
    ("geometry", "box", "cache_rows", "cache_cols"),
    [
        ("letterbox", (0, 12, 48, 24), slice(8, 24), slice(12 + 4, 12 + 20)),
        ("stretch", (0, 0, 48, 48), slice(8, 24), slice(8, 40)),
    ],
)
def test_mask_round_trip_to_native_box_is_exact(geometry, box, cache_rows, cache_cols) -> None:  # type: ignore[no-untyped-def]
    image, mask = _native()
    square, small, got_box = to_cache_frame(image, mask, S, geometry)
    assert square.shape == small.shape == (S, S)
    assert got_box == box
    expected = np.zeros((S, S), np.uint8)
    expected[cache_rows, cache_cols] = 1
    np.testing.assert_array_equal(small, expected)
    # back to native: the one inverse (crop the box, bilinear to H x W), thresholded at 0.5
    back = to_native(small.astype(np.float16), got_box, (H, W)) >= 0.5
    np.testing.assert_array_equal(back, mask)
    if geometry == "stretch":
        assert (square > 0).mean() > 0.9  # no padding: the image fills the square


def test_stretch_and_letterbox_differ_only_in_geometry() -> None:
    image, mask = _native()
    lb_img, _, lb_box = letterbox(image, mask, S)
    st_img, _, st_box = stretch(image, mask, S)
    assert lb_box != st_box and st_box == (0, 0, S, S)
    assert (lb_img[:, :12] == 0).all() and not np.array_equal(lb_img, st_img)


@pytest.mark.parametrize("geometry", ["letterbox", "stretch"])
def test_native_resolution_scoring_is_exact_for_both(geometry: str) -> None:
    image, mask = _native()
    _, small, box = to_cache_frame(image, mask, S, geometry)
    pred = Predictions(
        image_ids=["a.jpg"], probs=small[None].astype(np.float16), masks=small[None], boxes=np.array([box]),
        native_hw=np.array([[H, W]]), presence={"max": np.array([1.0])}, labels=np.array([1]),
        meta={"split": "val", "resize": geometry},
    )
    m = evaluate_predictions(pred, {"threshold": 0.5}, bootstrap=0, resolution="native",
                             native_masks_loader=lambda _id: mask.astype(np.uint8))
    assert m["dice_pos"] == pytest.approx(1.0) and m["iou_pos"] == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# caches record their geometry and are never used for the other


@pytest.fixture(scope="module")
def both(synth_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic archive prepared with a 64-px letterbox and a 64-px stretch cache (via the CLI)."""
    out = tmp_path_factory.mktemp("both_geometries")
    runner = CliRunner()
    for resize in ("letterbox", "stretch"):
        res = runner.invoke(app, ["prepare", "--archive", str(synth_archive), "--out", str(out), "--split-mode", "seed",
                                  "--cache-size", "64", "--resize", resize, "--workers", "1"])
        assert res.exit_code == 0, res.output
    return out


def test_resize_without_cache_size_is_refused(synth_archive: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["prepare", "--archive", str(synth_archive), "--out", str(tmp_path / "p"),
                                   "--resize", "stretch"])
    assert res.exit_code == 2 and "--cache-size" in res.output


def test_prepare_writes_one_cache_per_geometry(both: Path) -> None:
    assert (both / "cache" / "64.npz").is_file() and (both / "cache" / "64-stretch.npz").is_file()
    report = json.loads((both / "prepare_report.json").read_text())
    assert {k: v["geometry"] for k, v in report["caches"].items()} == {"64": "letterbox", "64-stretch": "stretch"}
    lb, st = load_cache(both / "cache" / "64.npz"), load_cache(both / "cache" / "64-stretch.npz")
    assert (lb.geometry, st.geometry) == ("letterbox", "stretch")
    assert (st.boxes == np.array([0, 0, 64, 64])).all()
    assert not (lb.boxes == np.array([0, 0, 64, 64])).all(axis=1).all()  # the synthetic images are not square
    np.testing.assert_array_equal(lb.native_hw, st.native_hw)


def test_load_prepared_picks_the_geometry_and_keeps_boxes_whole(both: Path) -> None:
    st = load_prepared(both, 32, splits=("val",), resize="stretch")
    assert st.cache_path.name == "64-stretch.npz" and st.resize == "stretch"
    assert (st.splits["val"].boxes == np.array([0, 0, 32, 32])).all()
    lb = load_prepared(both, 32, splits=("val",))
    assert lb.cache_path.name == "64.npz"


def test_a_cache_of_one_geometry_is_never_used_for_the_other(both: Path, tmp_path: Path) -> None:
    only_stretch = tmp_path / "prep"
    shutil.copytree(both, only_stretch)
    (only_stretch / "cache" / "64.npz").unlink()
    with pytest.raises(DataError, match="no letterbox cache"):
        load_prepared(only_stretch, 64, splits=("val",))
    with pytest.raises(DataError, match="no 64-px letterbox cache"):
        load_prepared(only_stretch, 64, cache_size=64, splits=("val",))
    with pytest.raises(DataError, match="--resize stretch"):
        find_cache(tmp_path / "nothing", 64, "stretch")
    # a stretch cache renamed to the letterbox name is caught by its recorded geometry
    shutil.copy(only_stretch / "cache" / "64-stretch.npz", only_stretch / "cache" / "64.npz")
    with pytest.raises(DataError, match="holds stretch images but data.resize is letterbox"):
        load_prepared(only_stretch, 64, splits=("val",))


def test_caches_written_before_the_geometry_member_read_as_letterbox(both: Path, tmp_path: Path) -> None:
    legacy = tmp_path / cache_filename(64)
    with zipfile.ZipFile(both / "cache" / "64.npz") as src, zipfile.ZipFile(legacy, "w") as dst:
        for info in src.infolist():
            if info.filename != "geometry.npy":
                dst.writestr(info, src.read(info.filename))
    assert load_cache(legacy).geometry == "letterbox"
    check_cache_geometry(legacy, "letterbox")
    with pytest.raises(DataError, match="holds letterbox"):
        check_cache_geometry(legacy, "stretch")


def test_config_resize_key_and_seed_examples_use_stretch() -> None:
    from fxbench.config import load_config

    assert load_config().data.resize == "letterbox"
    assert load_config(overrides=["data.resize=stretch"]).data.resize == "stretch"
    root = Path(__file__).resolve().parents[1] / "examples"
    seed_configs = ["seed_baseline_unet.yaml", "presence_aux_unet.yaml", "dual_head_unet.yaml", "dual_head_dg_aug.yaml"]
    for name in seed_configs:
        assert load_config(root / name).data.resize == "stretch", name


def test_peer_masks_are_brought_into_the_stretch_frame(both: Path, tmp_path: Path) -> None:
    from fxbench.select.peers import masks_to_predictions

    only_stretch = tmp_path / "prep"
    shutil.copytree(both, only_stretch)
    (only_stretch / "cache" / "64.npz").unlink()
    # the ground truth itself as a peer's native-size masks: it must score perfectly
    pred = masks_to_predictions(only_stretch / "masks", only_stretch, "val")
    assert pred.meta["resize"] == "stretch" and (pred.boxes == np.array([0, 0, 64, 64])).all()
    np.testing.assert_array_equal(pred.probs > 0.5, pred.masks > 0)
