"""Export a prepared folder in Ultralytics' YOLO detection layout, with fxbench's split.

Layout (https://docs.ultralytics.com/datasets/detect/)::

    OUT/data.yaml                      path (absolute), train/val/test image folders, nc 1, names {0: fracture}
    OUT/images/{train,val,test}/<stem>.jpg    the original JPEG, byte for byte (complete, EXIF orientation 1)
    OUT/images/{train,val,test}/<stem>.png    otherwise: grey, decoded as prepare does, EXIF orientation applied
    OUT/labels/{train,val}/<stem>.txt  one line per fracture: "0 cx cy w h" normalised to [0, 1]
    OUT/labels/test/<stem>.txt         only with test_labels (the test split stays sealed)
    OUT/case_mapping.csv               stem, image_id, split, label, boxes, image

An image that needs an EXIF transpose, or a truncated JPEG, is written decoded (PNG, already
transposed, no EXIF tag), so Ultralytics' loader, fxbench's masks and the labels all share one
frame and no loader has to repair a file; every other JPEG is copied unchanged (fast, lossless,
a third of the size of PNGs). A negative image has an empty label file (a background image).
Boxes come from ``PREP/boxes.json`` (:mod:`fxbench.data.boxes`), clipped to the image.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fxbench.errors import DataError, UsageError
from fxbench.io import write_bytes_atomic, write_csv_atomic, write_text_atomic
from fxbench.select.peers import (
    SPLITS,
    _bytes_reader,
    _png_bytes,
    _split_sha256,
    export_rows,
)


def yolo_label_lines(boxes: np.ndarray, width: int, height: int) -> list[str]:
    """``0 cx cy w h`` lines (6 decimals) for ``x, y, w, h`` pixel boxes [K,4], clipped to the image."""
    lines = []
    for x, y, w, h in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        x0, y0 = min(max(x, 0.0), width), min(max(y, 0.0), height)
        x1, y1 = min(max(x + w, 0.0), width), min(max(y + h, 0.0), height)
        if x1 <= x0 or y1 <= y0:
            continue
        lines.append(f"0 {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} "
                     f"{(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}")
    return lines


def _copy_as_is(row: dict[str, str], data: bytes) -> bool:
    """A complete JPEG needing no EXIF transpose is exported byte for byte (no re-encoding)."""
    return (data[:3] == b"\xff\xd8\xff" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"
            and (row.get("exif_orientation") or "1") == "1" and (row.get("truncated") or "0") == "0")


def _decode(data: bytes, row: dict[str, str]) -> np.ndarray:
    from fxbench.data.decode import ImageDecodeError, decode_image

    try:
        return decode_image(data, row.get("image_path") or row["image_id"]).pixels
    except ImageDecodeError as err:
        raise DataError(str(err)) from err


def data_yaml(root: Path, test_labels: bool, split_sha256: str | None) -> str:
    """The Ultralytics dataset YAML of an export at ``root``."""
    lines = [
        "# fxbench export yolo: FracAtlas fractures, fxbench's split" + (f" (split sha256 {split_sha256})" if split_sha256 else ""),
        "# test labels " + ("included" if test_labels else "withheld: score test predictions with `fxbench eval --predictions`"),
        f"path: {root.resolve().as_posix()}",
        "train: images/train",
        "val: images/val",
        "test: images/test",
        "nc: 1",
        "names:",
        "  0: fracture",
    ]
    return "\n".join(lines) + "\n"


def export_yolo(
    prepared_dir: str | Path,
    out: str | Path,
    *,
    test_labels: bool = False,
    archive: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the Ultralytics layout of ``prepared_dir`` into ``out``; returns ``out/data.yaml``.

    Raises:
        UsageError: ``out`` exists and is not empty (unless ``overwrite``).
        DataError: no boxes.json (re-run prepare), a missing image, duplicate stems.
    """
    from fxbench.data.boxes import read_gt_boxes

    prep, root = Path(prepared_dir), Path(out)
    rows, stems = export_rows(prep, "YOLO file names")
    gt = read_gt_boxes(prep)
    if gt is None:
        raise DataError(f"{prep} has no boxes.json (prepared before box metrics existed)",
                        f"re-run `fxbench prepare --out {prep}` (no image is decoded again)")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        if not overwrite:
            raise UsageError(f"{root} already exists", "pass --force to replace it")
        for sub in ("images", "labels"):
            shutil.rmtree(root / sub, ignore_errors=True)  # no stale images from an older export
    read_bytes = _bytes_reader(prep, archive)
    mapping = []
    for n, (row, stem) in enumerate(zip(rows, stems, strict=True), start=1):
        split = row["split"]
        data = read_bytes(row)
        if _copy_as_is(row, data):
            width, height = int(row["width"]), int(row["height"])
            name = f"{stem}.jpg"
            write_bytes_atomic(root / "images" / split / name, data)
        else:
            image = _decode(data, row)
            height, width = image.shape
            name = f"{stem}.png"
            write_bytes_atomic(root / "images" / split / name, _png_bytes(image))
        if (str(width), str(height)) != (row.get("width", str(width)), row.get("height", str(height))):
            raise DataError(f"{row['image_id']}: image is {width}x{height}, manifest says {row['width']}x{row['height']}",
                            "re-run `fxbench prepare --force`")
        lines = yolo_label_lines(gt.get(row["image_id"], np.zeros((0, 4))), width, height)
        if split != "test" or test_labels:
            write_text_atomic(root / "labels" / split / f"{stem}.txt", "".join(line + "\n" for line in lines))
        mapping.append({"stem": stem, "image_id": row["image_id"], "split": split, "label": row.get("label", ""),
                        "boxes": len(lines), "image": f"images/{split}/{name}"})
        if progress is not None:
            progress(n, len(rows))
    for split in SPLITS:
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
    write_csv_atomic(root / "case_mapping.csv", mapping, ["stem", "image_id", "split", "label", "boxes", "image"])
    yaml_path = root / "data.yaml"
    write_text_atomic(yaml_path, data_yaml(root, test_labels, _split_sha256(prep)))
    return yaml_path


def yolo_commands(yaml_path: Path, prepared: str | Path) -> list[str]:
    """Shell commands that train and predict Ultralytics YOLO on an export, then score with fxbench."""
    root = yaml_path.parent
    return [
        f"yolo detect train data={yaml_path} model=yolov8s.pt imgsz=640 single_cls=True",
        f"yolo detect predict model=runs/detect/train/weights/best.pt source={root / 'images' / 'val'} "
        "save_txt=True save_conf=True conf=0.001",
        f"fxbench eval --predictions runs/detect/predict/labels --prepared {prepared} --split val",
    ]
