"""One mask reader, one binarisation rule (non-zero = fracture), for every mask fxbench reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fxbench.data.masks import read_mask, read_prepared_mask
from fxbench.errors import DataError
from fxbench.evaluate.rules import binarize_mask

TRUTH = np.zeros((6, 7), np.uint8)
TRUTH[1:4, 2:5] = 1


@pytest.mark.parametrize("kind", ["0/255 grey", "0/1 labels", "faint grey", "palette", "rgb", "16-bit"])
def test_read_mask_binarises_every_encoding_alike(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.png"
    if kind == "0/255 grey":
        Image.fromarray(TRUTH * 255).save(path)
    elif kind == "0/1 labels":
        Image.fromarray(TRUTH).save(path)
    elif kind == "faint grey":
        Image.fromarray(TRUTH * 3).save(path)  # any non-zero value is fracture
    elif kind == "palette":
        im = Image.fromarray(TRUTH, mode="L").convert("P")
        im.save(path)
    elif kind == "rgb":
        Image.fromarray(np.stack([TRUTH * 200] * 3, axis=-1)).save(path)
    else:
        Image.fromarray(TRUTH.astype(np.uint16) * 1000).save(path)
    got = read_mask(path)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, TRUTH)


def test_read_prepared_mask_and_errors(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    Image.fromarray(TRUTH * 255).save(tmp_path / "masks" / "IMG0000001.png")
    np.testing.assert_array_equal(read_prepared_mask(tmp_path, "IMG0000001.jpg"), TRUTH)
    with pytest.raises(DataError, match="cannot read mask"):
        read_prepared_mask(tmp_path, "IMG0000002.jpg")


def test_binarize_mask_is_non_zero() -> None:
    values = np.array([[0, 1, 127, 128, 255]], np.uint8)
    assert binarize_mask(values).tolist() == [[False, True, True, True, True]]
