"""Prepared folder -> in-memory uint8 tensors per split.

Training never decodes JPEGs: the cache written by ``prepare`` is read once, resized to the
network size if needed (once, on load), and kept as uint8. Each step indexes, copies and
augments on the training device.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fxbench.errors import DataError
from fxbench.io import sha256_file


@dataclass
class SplitData:
    """One split at network resolution S.

    images, masks: uint8 [N,1,S,S] (masks 0/1); labels: int64 [N] (1 = ground-truth mask
    non-empty at S); boxes int32 [N,4] (top, left, h, w of the image in the square: the
    letterbox box, or the whole square for stretch); native_hw int32 [N,2].
    """

    name: str
    image_ids: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    labels: np.ndarray
    boxes: np.ndarray
    native_hw: np.ndarray

    def __len__(self) -> int:
        return len(self.image_ids)


@dataclass
class PreparedData:
    prepared_dir: Path
    cache_path: Path
    cache_sha256: str
    split_sha256: str
    image_size: int
    splits: dict[str, SplitData]
    mean: float
    std: float
    resize: str = "letterbox"


def read_manifest(prepared_dir: Path) -> list[dict[str, str]]:
    path = Path(prepared_dir) / "manifest.csv"
    if not path.is_file():
        raise DataError(
            f"no manifest.csv in {prepared_dir}",
            "run `fxbench prepare --archive ARCHIVE --out DIR` first, then pass data.prepared=DIR",
        )
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image_id", "label", "split"} <= set(rows[0]):
        raise DataError(f"{path} lacks the columns image_id,label,split", "re-run `fxbench prepare --force`")
    return rows


def split_sha256(rows: list[dict[str, str]]) -> str:
    text = "".join(f"{r['image_id']},{r['split']}\n" for r in sorted(rows, key=lambda r: r["image_id"]))
    return hashlib.sha256(text.encode()).hexdigest()


def _resize_split(images: torch.Tensor, masks: torch.Tensor, boxes: np.ndarray, size: int):
    """Area-resize uint8 images and masks [N,1,C,C] -> [N,1,size,size]; keeps tiny lesions alive."""
    src = images.shape[-1]
    out_i = torch.empty((images.shape[0], 1, size, size), dtype=torch.uint8)
    out_m = torch.empty_like(out_i)
    for start in range(0, images.shape[0], 256):
        sl = slice(start, start + 256)
        img = F.interpolate(images[sl].float(), size=(size, size), mode="area")
        out_i[sl] = img.round().clamp(0, 255).to(torch.uint8)
        m = F.interpolate(masks[sl].float(), size=(size, size), mode="area")
        hard = m >= 0.5
        # A lesion thinner than one output pixel must not vanish: fall back to "any overlap".
        lost = (hard.flatten(1).sum(1) == 0) & (masks[sl].flatten(1).sum(1) > 0)
        hard[lost] = m[lost] > 0
        out_m[sl] = hard.to(torch.uint8)
    scale = size / src
    new_boxes = np.round(boxes.astype(np.float64) * scale).astype(np.int32)
    # A very thin image (1-2 px wide in the cache) must keep a non-empty box inside the square.
    new_boxes[:, 2:] = np.clip(new_boxes[:, 2:], 1, size)
    new_boxes[:, :2] = np.clip(new_boxes[:, :2], 0, size - new_boxes[:, 2:])
    return out_i, out_m, new_boxes


def load_prepared(
    prepared_dir: str | Path,
    image_size: int,
    cache_size: int | None = None,
    splits: tuple[str, ...] = ("train", "val", "test"),
    resize: str = "letterbox",
    fold: int | None = None,
) -> PreparedData:
    """Load the prepared cache for ``splits`` at network resolution ``image_size``.

    ``resize`` (``data.resize``) picks the cache geometry; a cache recording another geometry
    is refused (DataError), never resized into this one.

    ``fold`` k: the splits of cross-validation fold k instead of the manifest's ``split``
    column (:func:`fxbench.data.folds.fold_split`; the split sha256 is that of the fold's split).
    """
    from fxbench.data.cache import (
        cache_filename,
        cache_image_ids,
        check_cache_geometry,
        find_cache,
        load_cache,
        prepare_command,
    )

    prepared_dir = Path(prepared_dir)
    rows = read_manifest(prepared_dir)
    if fold is not None:
        from fxbench.data.folds import fold_rows

        rows = fold_rows(prepared_dir, rows, fold)
    if cache_size is not None:
        cache_path = prepared_dir / "cache" / cache_filename(cache_size, resize)
        if not cache_path.is_file():
            flag = "" if resize == "letterbox" else f" --resize {resize}"
            raise DataError(
                f"no {cache_size}-px {resize} cache in {prepared_dir}",
                f"run `{prepare_command(prepared_dir, f'{flag} --cache-size {cache_size}')}`",
            )
    else:
        cache_path = find_cache(prepared_dir, image_size, resize)
    check_cache_geometry(cache_path, resize)
    index = {iid: i for i, iid in enumerate(cache_image_ids(cache_path))}
    missing = [r["image_id"] for r in rows if r["image_id"] not in index]
    if missing:
        raise DataError(
            f"cache {cache_path.name} lacks {len(missing)} manifest images (e.g. {missing[0]})",
            "re-run `fxbench prepare --force`",
        )
    out: dict[str, SplitData] = {}
    for name in splits:
        sel = [r for r in rows if r["split"] == name]
        if not sel:
            raise DataError(f"split '{name}' is empty in {prepared_dir}/manifest.csv", "re-run `fxbench prepare`")
        idx = np.array([index[r["image_id"]] for r in sel], dtype=np.int64)
        # Only this split's rows are read from the cache (memory: the split, not the dataset).
        cache = load_cache(cache_path, idx, checksum=False)
        # load_cache returns rows ascending; put them back in manifest order (a no-op when sorted).
        order = np.searchsorted(np.sort(idx), idx)
        if not np.array_equal(order, np.arange(len(idx))):
            cache.images, cache.masks = cache.images[order], cache.masks[order]
            cache.boxes, cache.native_hw = cache.boxes[order], cache.native_hw[order]
        images = torch.from_numpy(np.ascontiguousarray(cache.images))[:, None]
        masks = torch.from_numpy(np.ascontiguousarray(cache.masks))[:, None]
        boxes = cache.boxes.astype(np.int32)
        native_hw = cache.native_hw.astype(np.int32)
        if cache.size != image_size:
            images, masks, boxes = _resize_split(images, masks, boxes, image_size)
        labels = (masks.flatten(1).amax(1) > 0).numpy().astype(np.int64)
        out[name] = SplitData(
            name=name,
            image_ids=[r["image_id"] for r in sel],
            images=images,
            masks=masks,
            labels=labels,
            boxes=boxes,
            native_hw=native_hw,
        )
    mean, std = _train_stats(out.get("train"))
    return PreparedData(
        prepared_dir=prepared_dir,
        cache_path=cache_path,
        cache_sha256=sha256_file(cache_path),
        split_sha256=split_sha256(rows),
        image_size=image_size,
        splits=out,
        mean=mean,
        std=std,
        resize=resize,
    )


def _train_stats(train: SplitData | None) -> tuple[float, float]:
    """Mean and std of train pixels inside the letterbox boxes, in [0,1] units.

    Accumulated per image with integer sums: a float copy of the whole 512-px train set
    would need gigabytes.
    """
    if train is None:
        return 0.5, 0.25
    total, total_sq, count = 0, 0, 0
    for i, (t, left, h, w) in enumerate(train.boxes.tolist()):
        px = train.images[i, 0, t : t + h, left : left + w].to(torch.int64)
        total += int(px.sum())
        total_sq += int((px * px).sum())
        count += px.numel()
    if count == 0:
        return 0.5, 0.25
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    return mean / 255.0, max(var**0.5 / 255.0, 1e-3)
