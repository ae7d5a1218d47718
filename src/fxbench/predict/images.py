"""Reading arbitrary user images (PNG, JPEG, TIFF, DICOM) as one grey uint8 channel.

Used by ``fxbench predict``. DICOM needs the optional ``pydicom`` extra; MONOCHROME1 is
inverted and the modality and VOI LUTs (windowing) are applied before scaling to 8 bits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fxbench.errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
DICOM_SUFFIXES = {".dcm", ".dicom"}


def is_candidate(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES


def collect_inputs(paths: list[Path]) -> list[Path]:
    """Files given directly, plus image/DICOM files found recursively in folders (sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.rglob("*") if f.is_file() and is_candidate(f)))
        elif p.exists():
            out.append(p)
        else:
            raise DataError(f"input not found: {p}", "check the path")
    return out


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = np.percentile(arr, 0.0), np.percentile(arr, 100.0)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip((arr - lo) / (hi - lo) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def read_dicom(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError as err:  # pragma: no cover - depends on the extra
        raise DataError(f"{path}: reading DICOM needs pydicom", "pip install 'fxbench[dicom]'") from err
    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except Exception as err:  # noqa: BLE001 - pydicom raises many types for bad files
        raise DataError(f"{path}: not a readable DICOM image ({type(err).__name__})") from err
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1)
    elif arr.ndim == 3:  # multi-frame: take the first frame
        arr = arr[0]
    arr = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        arr = apply_voi_lut(arr, ds)
    out = _to_uint8(np.asarray(arr))
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = 255 - out
    return out


def read_grey(path: Path) -> np.ndarray:
    """Decode ``path`` into uint8 [H,W] (EXIF orientation applied, truncated JPEGs tolerated)."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return read_dicom(path)
    from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return _to_uint8(np.asarray(im))
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            return np.asarray(im.convert("L"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: not a readable image ({type(err).__name__}: {err})") from err


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Fit ``img`` [H,W] into ``size`` x ``size``, centred, zero padded. Returns (square, box)."""
    import torch
    import torch.nn.functional as F

    h, w = img.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    t = torch.from_numpy(img).float()[None, None]
    small = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    out = np.zeros((size, size), np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = small[0, 0].round().clamp(0, 255).byte().numpy()
    return out, (top, left, nh, nw)


def unletterbox(prob: np.ndarray, box: tuple[int, int, int, int], native_hw: tuple[int, int]) -> np.ndarray:
    """Crop the box out of a [S,S] probability map and resize it to the native (H, W)."""
    import torch
    import torch.nn.functional as F

    top, left, h, w = box
    crop = torch.from_numpy(np.ascontiguousarray(prob[top : top + h, left : left + w], dtype=np.float32))
    up = F.interpolate(crop[None, None], size=tuple(native_hw), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()
