"""A tiny, very learnable prepared folder written directly in the cache format.

Lesions are bright short bars on a noisy background, so a small U-Net learns them within a
few dozen steps on CPU. Used by the training tests, independent of the synthetic archive.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

META = ["hand", "leg", "hip", "shoulder", "mixed", "hardware", "multiscan", "fracture_count",
        "frontal", "lateral", "oblique"]


def make_easy_prepared(root: Path, n: int = 48, size: int = 64, seed: int = 0, pos_frac: float = 0.5) -> Path:
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    labels = np.zeros(n, np.int64)
    boxes = np.tile(np.array([0, 0, size, size], np.int32), (n, 1))
    for i in range(n):
        img = rng.normal(70, 12, (size, size))
        if rng.random() < pos_frac:
            labels[i] = 1
            y, x = rng.integers(8, size - 16, 2)
            h, w = (4, 10) if rng.random() < 0.5 else (10, 4)
            masks[i, y : y + h, x : x + w] = 1
            img[masks[i] > 0] += 120
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    ids = [f"IMG{i:07d}.jpg" for i in range(n)]
    order = np.argsort(ids)
    (root / "cache").mkdir(parents=True, exist_ok=True)
    arrays = dict(
        image_ids=np.array(ids)[order], format=np.array("raw"),
        size=np.array(size, np.int64), images=images[order], masks=masks[order], boxes=boxes[order],
        native_hw=np.tile(np.array([size, size], np.int32), (n, 1))[order],
    )
    # Square images: both geometries give the same square. The letterbox file has no geometry
    # member (as caches written before it existed), the stretch one records it.
    np.savez(root / "cache" / f"{size}.npz", **arrays)
    np.savez(root / "cache" / f"{size}-stretch.npz", geometry=np.array("stretch"), **arrays)
    splits = np.array(["train"] * n, dtype=object)
    idx = rng.permutation(n)
    splits[idx[: n // 4]] = "val"
    splits[idx[n // 4 : n // 4 + n // 6]] = "test"
    (root / "masks").mkdir(exist_ok=True)
    with open(root / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "label", "split", "width", "height", *META, "csv_fractured", "duplicate_group"])
        for i in range(n):
            w.writerow([ids[i], labels[i], splits[i], size, size, *([0] * len(META)), labels[i], ""])
    from PIL import Image

    for i in range(n):
        Image.fromarray(masks[i] * 255).save(root / "masks" / f"IMG{i:07d}.png")
    return root
