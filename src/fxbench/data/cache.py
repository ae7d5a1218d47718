"""The image/mask cache ``PREP/cache/<S>.npz`` (letterbox) or ``<S>-stretch.npz`` (format:
docs/internals.md).

Two geometries (``data.resize``): ``letterbox`` scales by S / max(H, W) and pads to the square
(fxbench's default, no distortion); ``stretch`` resizes each axis to S independently (the seed's
default, ``input.preserve_aspect: false``). Every cache records its geometry (member
``geometry``; caches written before it existed are letterbox, the only geometry then), and the
box of each image says where the image lies in the square: the letterbox box, or the whole
square for stretch. Going back to native size is the same for both (crop the box, resize to
(H, W)), so native scoring and ``predict`` need no special case.

An ``.npz`` is a zip of ``.npy`` members that ``numpy.load(allow_pickle=False)`` reads. Two
formats:

- ``raw``: ``images`` uint8 [N,S,S] and ``masks`` uint8 [N,S,S] 0/1. The members are
  deflate-compressed (what ``numpy.savez_compressed`` does) because the full dataset at 512 px
  is 2.1 GB uncompressed; the zero padding and empty masks shrink to almost nothing.
- ``jpeg``: ``images_blob``/``images_offsets`` (concatenated JPEGs) and
  ``masks_blob``/``masks_offsets`` (concatenated PNGs of 0/255 masks): a compact file that
  ``load_cache`` decodes once.

``CacheWriter`` streams images into the file one at a time, so preparing a large cache never
holds the full uint8 array in memory.
"""

from __future__ import annotations

import io
import os
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fxbench.errors import DataError
from fxbench.evaluate.rules import binarize_mask
from fxbench.io import atomic_path, sha256_file

CACHE_FORMATS = ("raw", "jpeg")
#: Input geometries (``data.resize``); the first is the default and the legacy meaning.
GEOMETRIES = ("letterbox", "stretch")
JPEG_QUALITY = 95
#: Deflate level for raw caches: level 1 is ~4x faster than 6 and within a few % in size.
DEFLATE_LEVEL = 1
_NAME = re.compile(r"^(\d+)(-stretch)?\.npz$")


@dataclass
class CacheArrays:
    """A decoded cache. Arrays are in ``image_ids`` order (sorted by image_id).

    images uint8 [N,S,S] grey; masks uint8 [N,S,S] 0/1; boxes int32 [N,4] (top, left, height,
    width of the image inside the square); native_hw int32 [N,2] (after EXIF transpose).
    """

    image_ids: list[str]
    images: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    native_hw: np.ndarray
    size: int
    sha256: str
    format: str = "raw"
    path: Path | None = field(default=None, compare=False)
    geometry: str = "letterbox"


def cache_key(size: int, geometry: str = "letterbox") -> str:
    """The name stem of a cache: ``"512"`` (letterbox, the legacy name) or ``"512-stretch"``."""
    _check_geometry(geometry)
    return str(int(size)) if geometry == "letterbox" else f"{int(size)}-{geometry}"


def parse_cache_key(key: str) -> tuple[int, str] | None:
    """``"512"`` -> (512, letterbox), ``"512-stretch"`` -> (512, stretch); None for other text."""
    m = _NAME.match(f"{key}.npz")
    if not m:
        return None
    return int(m.group(1)), "stretch" if m.group(2) else "letterbox"


def cache_filename(size: int, geometry: str = "letterbox") -> str:
    """``512.npz`` or ``512-stretch.npz``."""
    return f"{cache_key(size, geometry)}.npz"


def _check_geometry(geometry: str) -> None:
    if geometry not in GEOMETRIES:
        raise DataError(f"unknown resize geometry {geometry!r}", f"use one of {', '.join(GEOMETRIES)}")


# --------------------------------------------------------------------------------------
# letterbox


def letterbox_box(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an ``height`` x ``width`` image letterboxed into ``size`` x ``size``."""
    scale = size / max(height, width)
    h = min(size, max(1, round(height * scale)))
    w = min(size, max(1, round(width * scale)))
    return (size - h) // 2, (size - w) // 2, h, w


def letterbox(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Letterbox a grey image [H,W] uint8 and its bool mask [H,W] into S x S (docs/internals.md).

    Image: bilinear with antialiasing (PIL). Mask: a pixel is 1 when >= 50% of its area is
    fracture (box-filter coverage); if the native mask is non-empty at least one pixel stays
    on (the best-covered one), so no positive turns negative by resizing alone.
    Returns (image uint8 [S,S], mask uint8 [S,S] 0/1, box (top, left, h, w)).
    """
    height, width = image.shape
    return _place(image, mask, size, letterbox_box(height, width, size))


def _place(
    image: np.ndarray, mask: np.ndarray | None, size: int, box: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Resize image and mask into ``box`` (top, left, h, w) of a zero S x S square."""
    from PIL import Image

    height, width = image.shape
    top, left, h, w = box
    out_img = np.zeros((size, size), np.uint8)
    out_mask = np.zeros((size, size), np.uint8)
    resized = image if (h, w) == (height, width) else np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    out_img[top : top + h, left : left + w] = resized
    if mask is not None and mask.any():
        if (h, w) == (height, width):
            small = mask.astype(np.uint8)
        else:
            cover = np.asarray(Image.fromarray(mask.astype(np.float32)).resize((w, h), Image.Resampling.BOX))
            small = (cover >= 0.5 - 1e-6).astype(np.uint8)
            if not small.any():
                small[np.unravel_index(int(np.argmax(cover)), cover.shape)] = 1
        out_mask[top : top + h, left : left + w] = small
    return out_img, out_mask, (top, left, h, w)


def stretch_box(size: int) -> tuple[int, int, int, int]:
    """The box of a stretched image: the whole ``size`` x ``size`` square."""
    return 0, 0, size, size


def stretch(image: np.ndarray, mask: np.ndarray | None, size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """Stretch a grey image [H,W] uint8 and its bool mask [H,W] to S x S (the seed's default).

    Each axis is resized to S on its own (no padding). Image: bilinear with antialiasing (PIL),
    as the letterbox. Mask: the letterbox's coverage rule (>= 50% of a pixel's area, and a
    non-empty mask keeps its best-covered pixel), not the seed's nearest neighbour, so a thin
    fracture is not dropped or kept by the sampling phase. Returns (image, mask, (0, 0, S, S)).
    """
    return _place(image, mask, size, stretch_box(size))


def to_cache_frame(
    image: np.ndarray, mask: np.ndarray | None, size: int, geometry: str = "letterbox"
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """The one entry point for "native image -> cache square" in either geometry."""
    _check_geometry(geometry)
    return letterbox(image, mask, size) if geometry == "letterbox" else stretch(image, mask, size)


def encode_jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def encode_png_mask(mask01: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray((mask01 > 0).astype(np.uint8) * 255).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# writing


def _member_info(name: str, compress: bool) -> zipfile.ZipInfo:
    """A member with a fixed timestamp (same input, same bytes) and our deflate level.

    ``ZipFile.open(ZipInfo, "w")`` ignores the archive's compresslevel and would use zlib's
    default (6, ~4x slower), so the level is set on the member itself.
    """
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info._compresslevel = DEFLATE_LEVEL  # type: ignore[attr-defined]  # public as compress_level in 3.13
    return info


def _write_member(zf: zipfile.ZipFile, key: str, array: np.ndarray, compress: bool) -> None:
    info = _member_info(f"{key}.npy", compress)
    with zf.open(info, "w", force_zip64=True) as fh:
        np.lib.format.write_array(fh, np.asanyarray(array), allow_pickle=False)


class CacheWriter:
    """Stream N letterboxed items into ``path`` (a temp file; the caller renames it).

    Call ``add(image, mask01, box, native_hw)`` in image_id order (raw format), or
    ``add_encoded(jpeg_bytes, png_bytes, box, native_hw)`` (jpeg format), then ``close()``.
    """

    def __init__(
        self, path: str | os.PathLike[str], image_ids: Sequence[str], size: int, fmt: str = "raw",
        geometry: str = "letterbox",
    ) -> None:
        if fmt not in CACHE_FORMATS:
            raise DataError(f"unknown cache format {fmt!r}", f"use one of {', '.join(CACHE_FORMATS)}")
        _check_geometry(geometry)
        self.geometry = geometry
        self.path = Path(path)
        self.image_ids = list(image_ids)
        self.size = int(size)
        self.format = fmt
        self.n = len(self.image_ids)
        self.boxes = np.zeros((self.n, 4), np.int32)
        self.native_hw = np.zeros((self.n, 2), np.int32)
        self.count = 0
        self._zf = zipfile.ZipFile(self.path, "w", zipfile.ZIP_DEFLATED, allowZip64=True, compresslevel=DEFLATE_LEVEL)
        self._images = None
        self._masks: list[bytes] = []  # raw: zlib-compressed rows (mostly empty); jpeg: PNGs
        self._jpegs: list[bytes] = []
        if fmt == "raw":
            self._images = self._zf.open(_member_info("images.npy", True), "w", force_zip64=True)
            header = {"descr": "|u1", "fortran_order": False, "shape": (self.n, self.size, self.size)}
            np.lib.format.write_array_header_1_0(self._images, header)

    def _meta(self, box: Sequence[int], native_hw: Sequence[int]) -> None:
        if self.count >= self.n:
            raise ValueError("more items than image_ids")
        self.boxes[self.count] = box
        self.native_hw[self.count] = native_hw
        self.count += 1

    def add(self, image: np.ndarray, mask01: np.ndarray, box: Sequence[int], native_hw: Sequence[int]) -> None:
        """Append one letterboxed item: image uint8 [S,S], mask uint8 [S,S] 0/1."""
        if image.shape != (self.size, self.size) or mask01.shape != (self.size, self.size):
            raise ValueError(f"item shape {image.shape} / {mask01.shape} != ({self.size}, {self.size})")
        if self.format == "raw":
            assert self._images is not None
            self._images.write(np.ascontiguousarray(image, dtype=np.uint8).tobytes())
            self._masks.append(zlib.compress(np.ascontiguousarray(mask01 > 0, dtype=np.uint8).tobytes(), 1))
        else:
            self._jpegs.append(encode_jpeg(image))
            self._masks.append(encode_png_mask(mask01))
        self._meta(box, native_hw)

    def add_encoded(self, payload_image: bytes, payload_mask: bytes, box: Sequence[int], native_hw: Sequence[int]) -> None:
        """Append an item already encoded by a worker: raw = (image bytes S*S, zlib mask bytes);
        jpeg = (JPEG bytes, PNG bytes)."""
        if self.format == "raw":
            assert self._images is not None
            if len(payload_image) != self.size * self.size:
                raise ValueError("raw image payload has the wrong length")
            self._images.write(payload_image)
        else:
            self._jpegs.append(payload_image)
        self._masks.append(payload_mask)
        self._meta(box, native_hw)

    def close(self) -> None:
        """Write the remaining members and close the file (raises if items are missing)."""
        if self.count != self.n:
            self.abort()
            raise ValueError(f"cache got {self.count} items, expected {self.n}")
        zf = self._zf
        if self.format == "raw":
            assert self._images is not None
            self._images.close()
            with zf.open(_member_info("masks.npy", True), "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": (self.n, self.size, self.size)})
                for blob in self._masks:
                    fh.write(zlib.decompress(blob))
        else:
            for key, blobs in (("images", self._jpegs), ("masks", self._masks)):
                offsets = np.zeros(self.n + 1, np.int64)
                offsets[1:] = np.cumsum([len(b) for b in blobs]) if blobs else []
                _write_member(zf, f"{key}_blob", np.frombuffer(b"".join(blobs), np.uint8), compress=False)
                _write_member(zf, f"{key}_offsets", offsets, compress=True)
        _write_member(zf, "image_ids", np.array(self.image_ids, dtype=str) if self.image_ids else np.zeros(0, "<U1"), True)
        _write_member(zf, "format", np.array(self.format, dtype="<U8"), True)
        _write_member(zf, "geometry", np.array(self.geometry, dtype="<U16"), True)
        _write_member(zf, "size", np.array(self.size, dtype=np.int64), True)
        _write_member(zf, "boxes", self.boxes, True)
        _write_member(zf, "native_hw", self.native_hw, True)
        zf.close()

    def abort(self) -> None:
        try:
            if self._images is not None:
                self._images.close()
            self._zf.close()
        except Exception:  # noqa: BLE001 - the temp file is deleted by the caller anyway
            pass


def write_cache(
    path: str | os.PathLike[str],
    image_ids: Sequence[str],
    images: np.ndarray,
    masks: np.ndarray,
    boxes: np.ndarray,
    native_hw: np.ndarray,
    fmt: str = "raw",
    geometry: str = "letterbox",
) -> Path:
    """Write a whole cache atomically from in-memory arrays (images uint8 [N,S,S], masks 0/1).

    ``image_ids`` must already be sorted (the contract's order). Returns ``path``.
    """
    if list(image_ids) != sorted(image_ids):
        raise ValueError("image_ids must be sorted")
    n, size = images.shape[0], images.shape[1]
    with atomic_path(path) as tmp:
        writer = CacheWriter(tmp, image_ids, size, fmt, geometry)
        try:
            for i in range(n):
                writer.add(images[i], masks[i], boxes[i], native_hw[i])
        except BaseException:
            writer.abort()
            raise
        writer.close()
    return Path(path)


# --------------------------------------------------------------------------------------
# reading


def _decode_all(
    blob: np.ndarray, offsets: np.ndarray, size: int, is_mask: bool, rows: np.ndarray | None = None
) -> np.ndarray:
    """Decode concatenated JPEG/PNG blobs (all, or ``rows``) into uint8 [n,S,S] with a thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    sel = np.arange(len(offsets) - 1) if rows is None else rows
    out = np.zeros((len(sel), size, size), np.uint8)
    raw = blob.tobytes()

    def one(k: int) -> None:
        i = int(sel[k])
        im = Image.open(io.BytesIO(raw[offsets[i] : offsets[i + 1]]))
        arr = np.asarray(im.convert("L"))
        if arr.shape != (size, size):
            raise ValueError(f"item {i} decodes to {arr.shape}")
        out[k] = binarize_mask(arr) if is_mask else arr

    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        list(pool.map(one, range(len(sel))))
    return out


def _read_npy_rows(zf: zipfile.ZipFile, key: str, rows: np.ndarray) -> np.ndarray:
    """Stream ``key.npy`` out of the zip and keep only ``rows`` (sorted) of its first axis.

    Memory stays at the size of the selected rows: the 512-px raw cache of the whole dataset is
    1.07 GB per array, and a training run needs only its splits.
    """
    with zf.open(f"{key}.npy") as fh:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        if fortran or dtype != np.uint8 or len(shape) != 3:
            raise ValueError(f"{key}: expected C-order uint8 [N,S,S], got {dtype} {shape}")
        row_bytes = shape[1] * shape[2]
        out = np.empty((len(rows), shape[1], shape[2]), np.uint8)
        pos = 0
        for i in range(int(rows[-1]) + 1 if len(rows) else 0):
            chunk = fh.read(row_bytes)
            if len(chunk) != row_bytes:
                raise EOFError(f"{key}: truncated at row {i}")
            if i == rows[pos]:
                out[pos] = np.frombuffer(chunk, np.uint8).reshape(shape[1], shape[2])
                pos += 1
                if pos == len(rows):
                    break
    return out


def load_cache(
    path: str | os.PathLike[str], rows: Sequence[int] | np.ndarray | None = None, checksum: bool = True
) -> CacheArrays:
    """Load a cache (raw or jpeg; jpeg is decoded once). Bad files give a one-line DataError.

    ``rows``: load only these positions (any order; returned sorted ascending), so a caller that
    needs one split never holds the whole dataset in memory. ``checksum=False`` skips hashing the
    file (``sha256`` is then empty), for callers that load several row sets and hash once.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cache not found: {path}", "run `fxbench prepare --cache-size S` for the size you need")
    try:
        with np.load(path, allow_pickle=False) as z:
            fmt = str(z["format"])
            size = int(z["size"])
            # Caches written before the member existed are letterbox (the only geometry then).
            geometry = str(z["geometry"]) if "geometry" in z.files else "letterbox"
            ids = [str(s) for s in z["image_ids"]]
            sel = np.arange(len(ids)) if rows is None else np.unique(np.asarray(rows, dtype=np.int64))
            if len(sel) and (sel[0] < 0 or sel[-1] >= len(ids)):
                raise DataError(f"{path}: row index out of range", "re-run `fxbench prepare --force`")
            boxes = z["boxes"].astype(np.int32)[sel]
            native_hw = z["native_hw"].astype(np.int32)[sel]
            if fmt == "raw":
                with zipfile.ZipFile(path) as zf:
                    images = _read_npy_rows(zf, "images", sel)
                    masks = _read_npy_rows(zf, "masks", sel)
            elif fmt == "jpeg":
                images = _decode_all(z["images_blob"], z["images_offsets"], size, is_mask=False, rows=sel)
                masks = _decode_all(z["masks_blob"], z["masks_offsets"], size, is_mask=True, rows=sel)
            else:
                raise DataError(f"{path}: unknown cache format {fmt!r}", "rerun `fxbench prepare --force`")
            ids = [ids[i] for i in sel]
    except DataError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid fxbench cache ({type(err).__name__}: {err})", "rerun `fxbench prepare --force`") from err
    n = len(ids)
    if images.shape != (n, size, size) or masks.shape != (n, size, size) or boxes.shape != (n, 4) or native_hw.shape != (n, 2):
        raise DataError(f"{path}: arrays do not match {n} images of {size}x{size}", "rerun `fxbench prepare --force`")
    if geometry not in GEOMETRIES:
        raise DataError(f"{path}: unknown geometry {geometry!r}", "rerun `fxbench prepare --force`")
    return CacheArrays(ids, images, masks, boxes, native_hw, size, sha256_file(path) if checksum else "", fmt, path, geometry)


def cache_image_ids(path: str | os.PathLike[str]) -> list[str]:
    """The image ids of a cache, in row order, without reading its arrays."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return [str(s) for s in z["image_ids"]]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid fxbench cache ({type(err).__name__}: {err})", "rerun `fxbench prepare --force`") from err


def cache_geometry(path: str | os.PathLike[str]) -> str:
    """The geometry a cache file records (``letterbox`` for caches older than the member)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return str(z["geometry"]) if "geometry" in z.files else "letterbox"
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error) as err:
        raise DataError(f"{path} is not a valid fxbench cache ({type(err).__name__}: {err})", "rerun `fxbench prepare --force`") from err


def check_cache_geometry(path: str | os.PathLike[str], geometry: str) -> None:
    """Refuse a cache whose recorded geometry is not ``geometry`` (never use one for the other)."""
    have = cache_geometry(path)
    if have != geometry:
        raise DataError(
            f"cache {Path(path).name} holds {have} images but data.resize is {geometry}",
            f"run `fxbench prepare --resize {geometry} --cache-size S`, or set data.resize={have}",
        )


def available_caches(prepared_dir: str | os.PathLike[str], geometry: str = "letterbox") -> dict[int, Path]:
    """{S: path} of the caches of ``geometry`` under ``prepared_dir/cache`` (by file name)."""
    _check_geometry(geometry)
    folder = Path(prepared_dir) / "cache"
    out: dict[int, Path] = {}
    if folder.is_dir():
        for p in folder.iterdir():
            key = parse_cache_key(p.name[:-4]) if p.name.endswith(".npz") else None
            if key and key[1] == geometry and p.is_file():
                out[key[0]] = p
    return dict(sorted(out.items()))


def all_caches(prepared_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """{key: path} of every cache under ``prepared_dir/cache`` (``"512"``, ``"256-stretch"``...)."""
    out: dict[str, Path] = {}
    for geometry in GEOMETRIES:
        for size, path in available_caches(prepared_dir, geometry).items():
            out[cache_key(size, geometry)] = path
    return out


def prepare_command(prepared_dir: str | os.PathLike[str], options: str = "") -> str:
    """``fxbench prepare --archive A --out DIR OPTIONS`` for adding to a prepared folder, with the
    archive the folder was made from (its prepare_report.json) when that file is still there,
    so the hint runs as printed; else ``--archive ARCHIVE`` to fill in."""
    import json

    archive = "ARCHIVE"
    try:
        recorded = json.loads((Path(prepared_dir) / "prepare_report.json").read_text(encoding="utf-8")).get("archive")
        if recorded and Path(recorded).exists():
            archive = str(recorded)
    except (OSError, ValueError, AttributeError):
        pass
    return f"fxbench prepare --archive {archive} --out {prepared_dir}{options}"


def find_cache(prepared_dir: str | os.PathLike[str], image_size: int, geometry: str = "letterbox") -> Path:
    """The smallest ``geometry`` cache whose size is >= ``image_size`` (training resizes down from it)."""
    caches = available_caches(prepared_dir, geometry)
    fits = [s for s in caches if s >= image_size]
    if not fits:
        have = ", ".join(all_caches(prepared_dir)) or "none"
        flag = "" if geometry == "letterbox" else f" --resize {geometry}"
        raise DataError(
            f"no {geometry} cache of size >= {image_size} in {Path(prepared_dir) / 'cache'} (have: {have})",
            f"run `{prepare_command(prepared_dir, f'{flag} --cache-size {image_size}')}`",
        )
    return caches[fits[0]]
