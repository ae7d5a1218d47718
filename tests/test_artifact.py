"""Predictions artifact round trip and errors; letterbox inversion and native-resolution scoring."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage.transform import resize as sk_resize

from fxbench.artifacts.predictions import (
    Predictions,
    load_predictions,
    predictions_sha256,
    save_predictions,
    subset,
)
from fxbench.errors import DataError
from fxbench.evaluate import evaluate_predictions, resize_bilinear, segmentation_metrics, to_native


def _pred(n: int = 6, s: int = 12, seed: int = 0) -> Predictions:
    rng = np.random.default_rng(seed)
    masks = (rng.random((n, s, s)) > 0.9).astype(np.uint8)
    masks[::2] = 0
    return Predictions(
        image_ids=[f"IMG{i:07d}" for i in range(n)],
        probs=rng.random((n, s, s)).astype(np.float32),  # coerced to float16
        masks=masks,
        boxes=np.tile([0, 1, s, s - 2], (n, 1)),
        native_hw=np.tile([2 * s, 2 * s - 4], (n, 1)),
        presence={"head": rng.random(n), "max": rng.random(n), "topk_mean": rng.random(n)},
        labels=masks.reshape(n, -1).max(1),
        meta={"split": "val", "tta": "hv", "run": "r1", "checkpoint_sha256": "ab" * 32},
    )


def test_round_trip(tmp_path: Path) -> None:
    p = _pred()
    path = save_predictions(tmp_path / "predictions" / "val.npz", p)
    q = load_predictions(path)
    assert q.image_ids == p.image_ids and q.meta == p.meta
    assert q.probs.dtype == np.float16 and (q.probs == p.probs).all()
    assert q.masks.dtype == np.uint8 and (q.masks == p.masks).all()
    assert q.boxes.dtype == np.int32 and (q.boxes == p.boxes).all()
    assert q.native_hw.dtype == np.int32 and (q.native_hw == p.native_hw).all()
    assert q.labels.dtype == np.uint8 and (q.labels == p.labels).all()
    assert set(q.presence) == {"head", "max", "topk_mean"}
    for k, v in p.presence.items():
        assert q.presence[k].dtype == np.float32 and (q.presence[k] == v).all()
    # plain numpy can read it, without pickle, under the documented keys
    with np.load(path, allow_pickle=False) as npz:
        assert {"image_ids", "probs", "masks", "boxes", "native_hw", "labels", "meta_json",
                "presence_head", "presence_max", "presence_topk_mean"} <= set(npz.files)
    assert [f.name for f in path.parent.iterdir()] == ["val.npz"]  # no temporary left behind


def test_sha256_is_a_function_of_content(tmp_path: Path) -> None:
    p = _pred()
    a = predictions_sha256(save_predictions(tmp_path / "a.npz", p))
    b = predictions_sha256(save_predictions(tmp_path / "b.npz", p))
    assert a == b and len(a) == 64
    p.meta["tta"] = "none"
    assert predictions_sha256(save_predictions(tmp_path / "c.npz", p)) != a


def test_missing_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_predictions(tmp_path / "nope.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all")
    with pytest.raises(DataError, match="cannot read"):
        load_predictions(garbage)
    good = save_predictions(tmp_path / "good.npz", _pred())
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError):
        load_predictions(truncated)
    partial = tmp_path / "partial.npz"
    np.savez(partial, image_ids=np.array(["a"]), probs=np.zeros((1, 4, 4), np.float16))
    with pytest.raises(DataError, match="missing keys"):
        load_predictions(partial)
    with pytest.raises(DataError):
        predictions_sha256(tmp_path / "nope.npz")
    with np.load(good, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["format"] = np.array("someone-elses-format")
    other = tmp_path / "other.npz"
    np.savez(other, **arrays)
    with pytest.raises(DataError, match="unsupported"):
        load_predictions(other)


def test_inconsistent_shapes_are_rejected() -> None:
    p = _pred()
    with pytest.raises(DataError, match="boxes"):
        Predictions(p.image_ids, p.probs, p.masks, p.boxes[:3], p.native_hw, p.presence, p.labels)
    with pytest.raises(DataError, match="presence"):
        Predictions(p.image_ids, p.probs, p.masks, p.boxes, p.native_hw, {"max": np.zeros(2)}, p.labels)
    with pytest.raises(DataError, match="unique"):
        Predictions(["a"] * p.n, p.probs, p.masks, p.boxes, p.native_hw, p.presence, p.labels)


def test_subset() -> None:
    p = _pred()
    s = subset(p, [4, 1])
    assert s.image_ids == [p.image_ids[4], p.image_ids[1]]
    assert (s.probs[0] == p.probs[4]).all() and (s.presence["head"] == p.presence["head"][[4, 1]]).all()
    b = subset(p, np.arange(p.n) % 2 == 0)
    assert b.n == 3 and b.meta["subset_of_n"] == p.n
    with pytest.raises(DataError):
        subset(p, [99])


# ----------------------------------------------------------------------------- letterbox inversion


def _letterbox(native: np.ndarray, size: int, box: tuple[int, int, int, int], cache_content: np.ndarray) -> np.ndarray:
    sq = np.zeros((size, size), dtype=np.float32)
    top, left, h, w = box
    assert cache_content.shape == (h, w)
    sq[top:top + h, left:left + w] = cache_content
    return sq


def test_to_native_inverts_a_downscaling_letterbox_exactly() -> None:
    rng = np.random.default_rng(0)
    blocks = (rng.random((32, 16)) > 0.7).astype(np.float32)
    native = np.kron(blocks, np.ones((2, 2), np.float32))  # 64 x 32, cached at scale 1/2
    box = (0, 8, 32, 16)  # S=32: h=32, w=16, left=(32-16)//2
    square = _letterbox(native, 32, box, blocks)
    back = to_native(square, box, native.shape)
    assert back.shape == native.shape and back.dtype == np.float32
    assert ((back >= 0.5) == (native > 0)).all()


def test_to_native_inverts_an_upscaling_letterbox_exactly() -> None:
    rng = np.random.default_rng(1)
    native = rng.random((12, 20)).astype(np.float32)
    box = (8, 0, 24, 40)  # S=40, scale 2: h=24, top=(40-24)//2
    square = _letterbox(native, 40, box, np.kron(native, np.ones((2, 2), np.float32)))
    assert np.allclose(to_native(square, box, (12, 20)), native, atol=1e-6)
    ident = to_native(np.pad(native, ((1, 1), (0, 0))), (1, 0, 12, 20), (12, 20))
    assert (ident == native).all()
    with pytest.raises(DataError):
        to_native(square, (30, 0, 24, 40), (12, 20))


def test_resize_bilinear_matches_skimage() -> None:
    rng = np.random.default_rng(2)
    img = rng.random((17, 23)).astype(np.float32)
    for out in ((40, 50), (9, 11), (17, 60)):
        ref = sk_resize(img, out, order=1, mode="edge", anti_aliasing=False, preserve_range=True)
        assert np.allclose(resize_bilinear(img, out), ref, atol=1e-5)


def test_native_resolution_scoring() -> None:
    """Native = 2x2 blocks of the cache: pixel counts scale by 4, Dice is unchanged."""
    rng = np.random.default_rng(3)
    n, s = 5, 16
    masks = np.zeros((n, s, s), np.uint8)
    masks[1:, 4:9, 5:10] = 1
    probs = np.zeros((n, s, s), np.float16)
    probs[1:, 5:10, 5:11] = 1.0  # 0/1 maps upsample to exact 2x2 blocks at threshold 0.5
    probs[0, 2, 2] = 1.0  # lone false-positive pixel on the negative image
    native_masks = {f"n{i}": np.kron(masks[i], np.ones((2, 2), np.uint8)) * 255 for i in range(n)}
    pred = Predictions(
        image_ids=list(native_masks), probs=probs, masks=masks, boxes=np.tile([0, 0, s, s], (n, 1)),
        native_hw=np.tile([2 * s, 2 * s], (n, 1)), presence={"max": rng.random(n)}, labels=masks.reshape(n, -1).max(1),
    )
    cache = evaluate_predictions(pred, {"threshold": 0.5}, bootstrap=0)
    native = evaluate_predictions(pred, {"threshold": 0.5}, bootstrap=0, resolution="native",
                                  native_masks_loader=native_masks.__getitem__)
    assert native["resolution"] == "native" and cache["resolution"] == "cache"
    assert native["dice_pos"] == pytest.approx(cache["dice_pos"], abs=1e-7)  # eps differs with scale
    assert native["lesion_recall"] == cache["lesion_recall"] == 1.0
    assert native["empty_specificity"] == cache["empty_specificity"] == 0.0
    # min_component counts cache pixels at both resolutions: the 1-px FP disappears in both
    dec = {"threshold": 0.5, "min_component": 2}
    native_mc = evaluate_predictions(pred, dec, bootstrap=0, resolution="native",
                                     native_masks_loader=native_masks.__getitem__)
    assert native_mc["empty_specificity"] == 1.0 and native_mc["num_fp_components"] == 0
    assert native_mc["dice_pos"] == pytest.approx(segmentation_metrics(probs, masks, 0.5, 2)["dice_pos"], abs=1e-7)
    bad = dict(native_masks)
    bad["n0"] = np.zeros((3, 3), np.uint8)
    with pytest.raises(DataError, match="native mask"):
        evaluate_predictions(pred, {"threshold": 0.5}, bootstrap=0, resolution="native",
                             native_masks_loader=bad.__getitem__)
