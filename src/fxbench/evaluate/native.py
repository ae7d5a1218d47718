"""Going back from the letterboxed cache square to the native image (pure numpy).

The cache stores each image scaled by S / max(H, W) and centred in an S x S square; the box
(top, left, height, width) says where. Inverting it: crop the box, then resize the crop to the
native (H, W) with bilinear interpolation on pixel centres (``align_corners=False``, the
convention of torch ``F.interpolate``, OpenCV ``INTER_LINEAR`` and PIL).
"""

from __future__ import annotations

import numpy as np

from fxbench.errors import DataError


def _axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (i0, i1) and weight of i1 for each output pixel along one axis."""
    # Output pixel centre x + 0.5 maps to source coordinate (x + 0.5) * n_in / n_out - 0.5;
    # coordinates beyond the outer pixel centres are clamped (edge replication).
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, src - i0


def resize_bilinear(image: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D array [h,w] to ``out_hw`` (H, W) -> float32 [H,W].

    Pixel-centre aligned, no antialiasing (the maps are upsampled in practice). Output values
    are convex combinations of at most 4 neighbouring inputs (so ``>= t`` survives only where
    some input was ``>= t``). Equal sizes return the input unchanged (as float32).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2 or img.size == 0:
        raise DataError(f"resize_bilinear needs a non-empty 2-D array, got shape {list(img.shape)}")
    h_out, w_out = int(out_hw[0]), int(out_hw[1])
    if h_out < 1 or w_out < 1:
        raise DataError(f"output size must be positive, got {(h_out, w_out)}")
    if img.shape == (h_out, w_out):
        return img.copy()
    y0, y1, wy = _axis_weights(img.shape[0], h_out)
    x0, x1, wx = _axis_weights(img.shape[1], w_out)
    wy = wy.astype(np.float32)[:, None]
    wx = wx.astype(np.float32)[None, :]
    rows = img[y0] * (1.0 - wy) + img[y1] * wy  # [H, w]
    return rows[:, x0] * (1.0 - wx) + rows[:, x1] * wx


def crop_box(square: np.ndarray, box: np.ndarray | tuple[int, int, int, int]) -> np.ndarray:
    """The image region (top, left, height, width) of a letterboxed [S,S] array."""
    top, left, h, w = (int(v) for v in np.asarray(box).reshape(4))
    s0, s1 = square.shape[-2:]
    if top < 0 or left < 0 or h < 1 or w < 1 or top + h > s0 or left + w > s1:
        raise DataError(f"letterbox box {(top, left, h, w)} does not fit a {s0}x{s1} map")
    return square[..., top:top + h, left:left + w]


def to_native(
    prob_map: np.ndarray,
    box: np.ndarray | tuple[int, int, int, int],
    native_hw: np.ndarray | tuple[int, int],
) -> np.ndarray:
    """Invert the letterbox of one probability map.

    Args:
        prob_map: [S,S] probabilities at cache resolution (any float dtype).
        box: (top, left, height, width) of the image inside the square (``Predictions.boxes[i]``).
        native_hw: (H, W) native size (``Predictions.native_hw[i]``).

    Returns:
        float32 [H,W] probabilities at native resolution (bilinear, pixel-centre aligned).
    """
    h, w = (int(v) for v in np.asarray(native_hw).reshape(2))
    return resize_bilinear(crop_box(np.asarray(prob_map), box), (h, w))


def to_native_window(
    prob_map: np.ndarray,
    box: np.ndarray | tuple[int, int, int, int],
    native_hw: np.ndarray | tuple[int, int],
    threshold: float,
) -> tuple[np.ndarray, int, int] | None:
    """The part of :func:`to_native` that can reach ``threshold``, without upsampling the rest.

    A bilinear value is a convex combination of its (at most 4) source pixels, so a native pixel
    whose source rows (or columns) all lie outside the rows (columns) holding a cache value
    >= ``threshold`` stays below it. Only the native window fed by those rows and columns is
    computed, with the very same arithmetic as :func:`resize_bilinear` (identical values).

    Returns:
        (float32 [h,w] window of the native map, top, left) or None when no cache value reaches
        ``threshold`` (then no native pixel does either).
    """
    from fxbench.evaluate.metrics import threshold_probs

    crop = np.asarray(crop_box(np.asarray(prob_map), box), dtype=np.float32)
    on = threshold_probs(crop, threshold)
    if not on.any():
        return None
    h_out, w_out = (int(v) for v in np.asarray(native_hw).reshape(2))
    rows, cols = np.flatnonzero(on.any(axis=1)), np.flatnonzero(on.any(axis=0))
    y0, y1, wy = _axis_weights(crop.shape[0], h_out)
    x0, x1, wx = _axis_weights(crop.shape[1], w_out)
    ys = np.flatnonzero((y1 >= rows[0]) & (y0 <= rows[-1]))
    xs = np.flatnonzero((x1 >= cols[0]) & (x0 <= cols[-1]))
    wy_s = wy[ys].astype(np.float32)[:, None]
    wx_s = wx[xs].astype(np.float32)[None, :]
    part = crop[y0[ys]] * (1.0 - wy_s) + crop[y1[ys]] * wy_s
    return part[:, x0[xs]] * (1.0 - wx_s) + part[:, x1[xs]] * wx_s, int(ys[0]), int(xs[0])
