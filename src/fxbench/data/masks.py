"""The one reader of mask image files: ``PREP/masks/<stem>.png`` and other tools' mask PNGs.

Binarised by :func:`fxbench.evaluate.rules.binarize_mask` (non-zero = fracture), the rule the
jpeg cache's masks are decoded with too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fxbench.errors import DataError
from fxbench.evaluate.rules import binarize_mask


def read_mask(path: str | Path) -> np.ndarray:
    """A mask image file -> uint8 [H,W] 0/1; DataError (one line) when it cannot be read.

    Grey, 1-bit, palette and 16-bit images are read as stored (a palette index or a label is
    its value); RGB(A) is converted to grey first.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im if im.mode in ("L", "1", "P", "I", "I;16") else im.convert("L"))
    except (OSError, UnidentifiedImageError) as err:
        raise DataError(f"cannot read mask {path} ({err})") from err
    if arr.ndim == 3:
        arr = arr[..., 0]
    return binarize_mask(arr).astype(np.uint8)


def read_prepared_mask(prepared: str | Path, image_id: str) -> np.ndarray:
    """``PREP/masks/<stem of image_id>.png`` at native size as uint8 0/1."""
    return read_mask(Path(prepared) / "masks" / f"{Path(image_id).stem}.png")
