"""The one image decoder: archive files, the predict verb's inputs, peers, exports and the bench.

:func:`decode_image` gives the EXIF-transposed frame as one 8-bit grey channel, tolerates
truncated JPEGs (FracAtlas has some) and scales 16-bit data by its range class.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class DecodedImage:
    """A decoded image in the EXIF-transposed frame, one 8-bit grey channel [H, W]."""

    pixels: np.ndarray
    orientation: int
    truncated: bool  # the file ends before its end marker (or needed tolerant loading)
    strict_failed: bool  # a strict decode failed; tolerant loading was needed
    mode: str  # PIL mode of the file


class ImageDecodeError(Exception):
    """Raised for files that are not decodable images (recorded as a warning by prepare)."""


@contextlib.contextmanager
def truncated_loading(allowed: bool) -> Iterator[None]:
    """PIL's LOAD_TRUNCATED_IMAGES set to ``allowed`` inside the block only (not process-wide)."""
    from PIL import ImageFile

    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = allowed
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _open_loaded(data: bytes, tolerant: bool) -> Any:
    from PIL import Image

    with truncated_loading(tolerant):
        im = Image.open(io.BytesIO(data))
        im.load()
    return im


def to_grey(im: Any) -> np.ndarray:
    """Any PIL image -> uint8 [H, W]. 16-bit and float are scaled by their own range class
    (12-bit data stays visible), palette/CMYK/RGBA go through RGB (alpha dropped)."""
    mode = im.mode
    if mode == "L":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im).astype(np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo = min(float(arr.min()), 0.0)
        top = float(arr.max())
        full = 255.0 if top <= 255 else 4095.0 if top <= 4095 else 65535.0 if top <= 65535 else top
        return np.clip((arr - lo) * (255.0 / max(full - lo, 1e-9)), 0, 255).round().astype(np.uint8)
    if mode in ("LA", "La"):
        return np.asarray(im.getchannel(0), dtype=np.uint8).copy()
    if mode != "RGB":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB").convert("RGB")
    return np.asarray(im.convert("L"), dtype=np.uint8).copy()


def _is_truncated_jpeg(data: bytes) -> bool:
    return data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9")


def decode_image(data: bytes, where: str) -> DecodedImage:
    """Decode image bytes: EXIF transpose, truncated-JPEG tolerance, grey [H, W] uint8.

    Raises ImageDecodeError for empty, non-image or undecodable data.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise ImageDecodeError(f"{where} is an empty (0-byte) file")
    strict_failed = False
    try:
        try:
            im = _open_loaded(data, tolerant=False)
        except OSError as err:
            if "truncated" not in str(err).lower() and "premature" not in str(err).lower():
                raise
            strict_failed = True
            im = _open_loaded(data, tolerant=True)
        try:
            orientation = int(im.getexif().get(0x0112, 1) or 1)
        except Exception:  # noqa: BLE001 - a corrupt EXIF block must not lose the image
            orientation = 1
        mode = im.mode
        if orientation in range(2, 9):
            im = ImageOps.exif_transpose(im)
        pixels = to_grey(im)
    except UnidentifiedImageError as err:
        raise ImageDecodeError(f"{where} is not an image file") from err
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"{where} is too large to decode safely ({err})") from err
    except (OSError, SyntaxError, ValueError, TypeError, EOFError, MemoryError, KeyError, IndexError) as err:
        raise ImageDecodeError(f"{where} cannot be decoded ({type(err).__name__}: {err})") from err
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageDecodeError(f"{where} decodes to an empty or non-2-D image")
    truncated = strict_failed or _is_truncated_jpeg(data)
    return DecodedImage(pixels, orientation if orientation in range(1, 9) else 1, truncated, strict_failed, mode)
