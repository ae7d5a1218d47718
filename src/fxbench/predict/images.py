"""Reading arbitrary user images (PNG, JPEG, TIFF, BMP, DICOM) as one grey uint8 channel, and
bringing them into the network's frame with the rules the training data went through.

Used by ``fxbench predict``. Ordinary images are decoded exactly as ``fxbench prepare`` decodes
FracAtlas (:func:`fxbench.data.decode.decode_image`: EXIF orientation applied, truncated
JPEGs tolerated, every mode to 8-bit grey). DICOM needs the optional ``pydicom`` extra: the
modality LUT (rescale) and the VOI LUT or window are applied, the result is scaled to 8 bits
over the VOI's output range (over the data range when the file has no VOI), and MONOCHROME1
is inverted so that bone is bright, as in MONOCHROME2.

The network input is made by :func:`network_input`: the prepare stage's letterbox or stretch
(:func:`fxbench.data.cache.to_cache_frame`, the run's ``data.resize``) to the run's cache size, then, when the run trained at
another size, the same area resize :func:`fxbench.data.dataset.load_prepared` applies. A
FracAtlas image given to ``fxbench predict`` therefore reaches the network bit for bit as it
did in ``fxbench eval``. The way back to native size is :func:`fxbench.evaluate.native.to_native`,
the function native-resolution scoring uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fxbench.data.cache import letterbox, to_cache_frame  # noqa: F401  (re-exported: the one geometry rule)
from fxbench.errors import DataError
from fxbench.evaluate.native import to_native  # noqa: F401  (re-exported: the one way back)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
_DICOM_MAGIC_OFFSET = 128


def has_dicom_magic(path: Path) -> bool:
    """True when ``path`` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(_DICOM_MAGIC_OFFSET + 4)
    except OSError:
        return False
    return head[_DICOM_MAGIC_OFFSET:] == b"DICM"


def is_candidate(path: Path) -> bool:
    """An image or DICOM file by its suffix; a suffix-less file when it has the DICOM magic
    (scanners and PACS exports often write DICOM files without an extension)."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES | DICOM_SUFFIXES:
        return True
    return suffix == "" and has_dicom_magic(path)


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Files given directly, plus image/DICOM files found recursively in folders (sorted).

    Hidden files and folders (``.name``) inside a folder are skipped; a file named on the command
    line is always taken (and reported as unreadable if it is not an image).
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*")
                if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts) and is_candidate(f)
            )
        elif p.exists():
            found = [p]
        else:
            raise DataError(f"input not found: {p}", "check the path")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def _scale_to_uint8(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map of [lo, hi] to 0..255 (rounded, clipped); constant images give 0."""
    arr = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=lo, posinf=hi, neginf=lo)
    if not hi > lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.floor((arr - lo) * (255.0 / (hi - lo)) + 0.5), 0, 255).astype(np.uint8)


def _pydicom() -> tuple[Any, Any, Any]:
    """(pydicom, apply_modality_lut, apply_voi_lut) for pydicom 3 and 2.x."""
    import pydicom

    try:
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut  # type: ignore[no-redef]
    return pydicom, apply_modality_lut, apply_voi_lut


def _voi_output_range(ds: Any, apply_voi_lut: Any) -> tuple[float, float] | None:
    """The output range of the file's VOI transform (what its window maps to), or None.

    Found by sending the extremes of the VOI input through the same pydicom call that
    transforms the pixels, so it follows pydicom's rules (LINEAR, LINEAR_EXACT, SIGMOID windows
    and VOI LUT sequences) without restating them.
    """
    seq = ds.get("VOILUTSequence")
    if seq:
        desc = [int(v) for v in seq[0].LUTDescriptor]
        n_entries = desc[0] or 65536
        first = desc[1]
        probe = np.arange(first - 1, first + n_entries + 1, dtype=np.int64)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        probe = np.array([-1e30, 1e30], dtype=np.float64)
    else:
        return None
    out = np.asarray(apply_voi_lut(probe, ds), dtype=np.float64)
    return float(out.min()), float(out.max())


def read_dicom(path: Path) -> np.ndarray:
    """DICOM -> uint8 [H,W]: modality LUT, VOI LUT or window, 8-bit scaling, MONOCHROME1 inverted.

    Multi-frame files give their first frame; colour files the mean of R, G and B.
    """
    try:
        pydicom, apply_modality_lut, apply_voi_lut = _pydicom()
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise DataError(f"{path}: reading DICOM needs pydicom", "pip install 'fxbench[dicom]'") from err
    try:
        ds = pydicom.dcmread(str(path))
        arr = np.asarray(ds.pixel_array)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if frames > 1:
            arr = arr[0]
        if samples > 1:
            arr = arr[..., :3].astype(np.float64).mean(-1)
            photometric = "RGB"
        else:
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            arr = np.asarray(apply_modality_lut(arr, ds))
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"pixel data of shape {list(arr.shape)} is not one 2-D image")
        voi = None
        if photometric in ("MONOCHROME1", "MONOCHROME2"):
            voi = _voi_output_range(ds, apply_voi_lut)
            if voi is not None:
                arr = np.asarray(apply_voi_lut(arr, ds), dtype=np.float64)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad or unsupported files
        hint = ("compressed DICOM may need a decoder: pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg"
                if "decode" in str(err).lower() or "handler" in str(err).lower() else "")
        raise DataError(f"{path}: not a readable DICOM image ({type(err).__name__}: {err})", hint) from err
    arr = np.asarray(arr, dtype=np.float64)
    if voi is not None:
        lo, hi = voi
    else:
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if photometric == "MONOCHROME1":
        # Invert in the value domain, before rounding: a MONOCHROME1 file and its inverted
        # MONOCHROME2 twin then give the same bytes.
        arr = (lo + hi) - arr
    return _scale_to_uint8(arr, lo, hi)


def read_grey(path: Path) -> np.ndarray:
    """Decode ``path`` into uint8 [H,W]; DataError (one line) when it is not a readable image.

    DICOM is recognised by its suffix or, whatever the suffix, by the ``DICM`` magic.
    """
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES or has_dicom_magic(path):
        return read_dicom(path)
    from fxbench.data.decode import ImageDecodeError, decode_image

    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read the file ({type(err).__name__}: {err})") from err
    try:
        return decode_image(data, "the file").pixels
    except ImageDecodeError as err:
        raise DataError(f"{path}: not a readable image ({err})") from err


def network_input(
    grey: np.ndarray, image_size: int, cache_size: int | None = None, resize: str = "letterbox"
) -> tuple[np.ndarray, np.ndarray]:
    """A native grey image -> (uint8 [S,S] network input, box (top, left, h, w) int32 [4]).

    The same two steps the run's training and ``fxbench eval`` data went through: the prepare
    geometry ``resize`` (letterbox or stretch) to ``cache_size`` (the cache the run read;
    default ``image_size``), then, if the sizes differ, the area resize of
    :func:`fxbench.data.dataset.load_prepared`.
    """
    size = int(cache_size or image_size)
    square, _, box = to_cache_frame(np.ascontiguousarray(grey, dtype=np.uint8), None, size, resize)
    boxes = np.asarray([box], dtype=np.int32)
    if size != image_size:
        import torch

        from fxbench.data.dataset import _resize_split

        t = torch.from_numpy(square)[None, None]
        small, _, boxes = _resize_split(t, torch.zeros_like(t), boxes, image_size)
        square = small[0, 0].numpy()
    return square, boxes[0]
