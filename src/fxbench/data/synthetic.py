"""A synthetic FracAtlas-layout archive, so the real prepare path runs everywhere (tests, demo).

Layout and quirks follow the real archive (reference/fracatlas.md): dataset.csv with all 13
columns and CRLF endings, images/Fractured and images/Non_fractured, COCO + VGG JSON, PASCAL
VOC, YOLO, Utilities/Fracture Split (positives only, contiguous id blocks), two size regimes,
EXIF-rotated JPEGs (annotations in the transposed frame), truncated JPEGs, byte-identical
duplicates, one VGG entry missing a polygon and one wrong csv ``fractured`` value.

Images look like a long bone: a bright shaft with a brighter cortical rim over soft tissue and
noise. Each fracture is a thin polygon across the shaft, painted dark in the image, so a model
can learn it within a few steps. Deterministic for a given seed (zip bytes included).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.errors import DataError

SMALL = ((373, 454), (454, 373))  # (width, height): ~91% of the real archive
LARGE = ((2304, 2880), (2880, 2304))
JPEG_QUALITY = 92
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
#: PIL transpose that turns a *displayed* image into the stored one for each EXIF orientation
#: (the inverse of what ``ImageOps.exif_transpose`` applies on load).
_STORE_TRANSPOSE = {3: "ROTATE_180", 6: "ROTATE_90", 8: "ROTATE_270"}


@dataclass
class SynthImage:
    """Ground truth of one synthetic image (display frame = after EXIF transpose)."""

    image_id: str
    width: int
    height: int
    fractures: list[list[float]]  # flat polygons x0,y0,x1,y1,...
    orientation: int = 1
    truncated: str = ""  # "", "eoi" (end marker cut) or "cut" (40% of the bytes cut)
    duplicate_of: str | None = None
    grey_mode: str = "L"  # stored as "L" or "RGB"


@dataclass
class SynthPlan:
    """Which image gets which quirk (returned so tests can check the prepare findings)."""

    images: list[SynthImage]
    positives: list[str]
    vgg_missing: str | None  # positive whose VGG entry lacks one polygon
    csv_wrong: str | None  # positive whose csv `fractured` says 0
    positive_copy: str | None = None  # unannotated Non_fractured byte copy of a fractured image
    meta: dict[str, dict[str, int]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# planning


def _scaled(size: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(24, round(size[0] * scale)), max(24, round(size[1] * scale))


def plan_synthetic(
    n_images: int = 64, seed: int = 0, large_fraction: float = 0.1, positive_fraction: float = 0.2, scale: float = 1.0
) -> SynthPlan:
    """Decide ids, sizes, labels and quirks (no pixels yet). Deterministic in the arguments."""
    if n_images < 8:
        raise DataError(f"--n-images {n_images} is too small", "use at least 8 so every quirk fits")
    if not 0 < positive_fraction < 1 or not 0 <= large_fraction < 1 or scale <= 0:
        raise DataError("positive_fraction must be in (0, 1), large_fraction in [0, 1), scale > 0")
    rng = np.random.default_rng(seed)
    n = n_images
    n_pos = min(n - 4, max(3, round(n * positive_fraction)))
    pos = set(int(i) for i in rng.choice(n, n_pos, replace=False))
    n_large = min(n - 1, round(n * large_fraction)) if large_fraction > 0 else 0
    large = set(int(i) for i in rng.choice(n, n_large, replace=False))
    images: list[SynthImage] = []
    for i in range(n):
        regime = LARGE if i in large else SMALL
        w, h = _scaled(regime[0] if rng.random() < 0.72 else regime[1], scale)
        images.append(SynthImage(f"IMG{i:07d}.jpg", w, h, [], grey_mode="RGB" if rng.random() < 0.85 else "L"))
    positives = sorted(images[i].image_id for i in pos)
    negatives = [im for im in images if im.image_id not in positives and im.width * im.height < 1e6 * scale * scale]
    negatives = negatives or [im for im in images if im.image_id not in positives]
    # Quirks go to distinct small images so each can be checked on its own.
    order = [int(i) for i in rng.permutation(len(negatives))]
    pool = [negatives[i] for i in order]
    n_trunc = max(1, n // 20)
    for k, im in enumerate(pool[:n_trunc]):
        im.truncated = "eoi" if k == 0 and n_trunc > 1 else "cut"
    n_dup = max(1, n // 25)
    rest = pool[n_trunc:]
    for k in range(n_dup):
        if len(rest) >= 2 * k + 2:
            rest[2 * k + 1].duplicate_of = rest[2 * k].image_id
            rest[2 * k + 1].width, rest[2 * k + 1].height = rest[2 * k].width, rest[2 * k].height
    rot_negs = [im for im in rest[2 * n_dup :] if not im.truncated][:2]
    for im, o in zip(rot_negs, (6, 3), strict=False):
        im.orientation = o
    pos_imgs = [im for im in images if im.image_id in positives and im.width * im.height < 1e6 * scale * scale]
    pos_imgs = pos_imgs or [im for im in images if im.image_id in positives]
    for im, o in zip(pos_imgs[:2], (6, 8), strict=False):
        im.orientation = o
    # Like the real archive: one radiograph filed twice, annotated as fractured only once.
    spare = [im for im in rest[2 * n_dup :] if not im.truncated and im.orientation == 1]
    copy = None
    if spare and len(pos_imgs) > 2:
        src, copy = pos_imgs[-1], spare[0]
        copy.duplicate_of, copy.width, copy.height = src.image_id, src.width, src.height
    return SynthPlan(images, positives, None, None, positive_copy=copy.image_id if copy else None)


# --------------------------------------------------------------------------------------
# pixels


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))


def _fracture_polygon(rng: np.random.Generator, cx: float, cy: float, ang: float, radius: float, w: int, h: int) -> list[float] | None:
    """A thin 6-point polygon across the shaft at a random point of its visible length."""
    for _ in range(50):
        t = rng.uniform(-0.35, 0.35) * max(w, h)
        px, py = cx + t * math.cos(ang), cy + t * math.sin(ang)
        if 0.15 * w < px < 0.85 * w and 0.15 * h < py < 0.85 * h:
            break
    else:
        return None
    jitter = rng.uniform(-0.45, 0.45)
    d = ang + math.pi / 2 + jitter
    half_len = 1.15 * radius / max(math.cos(jitter), 0.5)
    half_th = max(1.5, 0.008 * min(w, h))
    ux, uy = math.cos(d), math.sin(d)
    nx, ny = -uy, ux
    kink = rng.uniform(-1.0, 1.0) * half_th  # a small zig-zag, like a real crack
    pts = [
        (px - ux * half_len - nx * half_th, py - uy * half_len - ny * half_th),
        (px + nx * kink - nx * half_th, py + ny * kink - ny * half_th),
        (px + ux * half_len - nx * half_th, py + uy * half_len - ny * half_th),
        (px + ux * half_len + nx * half_th, py + uy * half_len + ny * half_th),
        (px + nx * kink + nx * half_th, py + ny * kink + ny * half_th),
        (px - ux * half_len + nx * half_th, py - uy * half_len + ny * half_th),
    ]
    flat = []
    for x, y in pts:
        flat += [round(min(max(x, 0.0), w - 1.0), 3), round(min(max(y, 0.0), h - 1.0), 3)]
    return flat


def render_bone(rng: np.random.Generator, w: int, h: int, n_fractures: int) -> tuple[np.ndarray, list[list[float]]]:
    """A bone-like grey image uint8 [h, w] and its fracture polygons (display frame).

    The shaft is bright with a brighter rim; each fracture polygon is painted dark, so the
    annotation marks exactly what is visible.
    """
    from PIL import Image, ImageDraw, ImageFilter

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = w / 2 + rng.normal(0, 0.04 * w), h / 2 + rng.normal(0, 0.04 * h)
    ang = rng.uniform(0, math.pi)
    along = (xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)
    across = np.abs(-(xx - cx) * math.sin(ang) + (yy - cy) * math.cos(ang))
    radius = 0.09 * min(w, h) * rng.uniform(0.85, 1.2)
    half_len = 0.42 * max(w, h)
    soft = max(1.0, 0.08 * radius)
    tissue = 55 * np.exp(-((across / (2.4 * radius)) ** 2))
    shaft = _sigmoid((radius - across) / soft) * _sigmoid((half_len - np.abs(along)) / (4 * soft))
    rim = np.exp(-(((across - 0.8 * radius) / (0.18 * radius)) ** 2)) * shaft
    img = 22 + tissue + 120 * shaft + 45 * rim + rng.normal(0, 5, (h, w))
    polys = [p for p in (_fracture_polygon(rng, cx, cy, ang, radius, w, h) for _ in range(n_fractures)) if p]
    if polys:
        crack = Image.new("L", (w, h), 0)
        draw = ImageDraw.Draw(crack)
        for p in polys:
            draw.polygon([(round(p[i]), round(p[i + 1])) for i in range(0, len(p), 2)], fill=255, outline=255)
        dark = np.asarray(crack) > 0
        img[dark] = img[dark] * 0.3 + 8
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
    return np.asarray(out), polys


def _encode(display: np.ndarray, im: SynthImage) -> bytes:
    """Store the displayed pixels as a JPEG with the plan's EXIF orientation and mode."""
    from PIL import Image

    pil = Image.fromarray(display)
    if im.grey_mode == "RGB":
        pil = pil.convert("RGB")
    kwargs: dict[str, Any] = {"format": "JPEG", "quality": JPEG_QUALITY}
    if im.orientation != 1:
        pil = pil.transpose(getattr(Image.Transpose, _STORE_TRANSPOSE[im.orientation]))
        exif = Image.Exif()
        exif[0x0112] = im.orientation
        kwargs["exif"] = exif.tobytes()
    buf = io.BytesIO()
    pil.save(buf, **kwargs)
    data = buf.getvalue()
    if im.truncated == "eoi":
        data = data[:-2]
    elif im.truncated == "cut":
        data = data[: int(len(data) * 0.6)]
    return data


# --------------------------------------------------------------------------------------
# annotation files


def _bbox(poly: list[float]) -> tuple[float, float, float, float]:
    xs, ys = poly[0::2], poly[1::2]
    return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)


def _area(poly: list[float]) -> float:
    xs, ys = poly[0::2], poly[1::2]
    return abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(xs)))) / 2


def _coco(plan: SynthPlan, by_id: dict[str, SynthImage]) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for k, image_id in enumerate(plan.positives, start=1):
        im = by_id[image_id]
        images.append({"id": k, "width": im.width, "height": im.height, "file_name": image_id})
        for poly in im.fractures:
            anns.append({"id": len(anns), "iscrowd": 0, "image_id": k, "category_id": 0, "segmentation": [poly],
                         "bbox": list(_bbox(poly)), "area": _area(poly)})
    return {"info": {"description": "fxbench synthetic FracAtlas"}, "images": images, "annotations": anns,
            "categories": [{"id": 0, "name": "fractured"}]}


def _vgg(plan: SynthPlan, by_id: dict[str, SynthImage], sizes: dict[str, int]) -> dict[str, Any]:
    out = {}
    for image_id in plan.positives:
        polys = list(by_id[image_id].fractures)
        if image_id == plan.vgg_missing:
            polys = polys[:-1]  # the deliberate disagreement: VGG lost a polygon
        regions = {}
        for k, p in enumerate(polys):
            xs, ys = p[0::2] + p[0:1], p[1::2] + p[1:2]  # VIA closes its polygons
            regions[str(k)] = {"shape_attributes": {"name": "polygon", "all_points_x": xs, "all_points_y": ys},
                               "region_attributes": {"label": "fractured"}}
        out[image_id] = {"fileref": "", "size": sizes[image_id], "filename": image_id, "base64_img_data": "",
                         "file_attributes": {}, "regions": regions}
    return out


def _voc(im: SynthImage) -> str:
    objects = ""
    for p in im.fractures:
        x, y, bw, bh = _bbox(p)
        objects += (f"  <object>\n    <name>fractured</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
                    f"    <difficult>0</difficult>\n    <bndbox>\n      <xmin>{int(x)}</xmin>\n      <ymin>{int(y)}</ymin>\n"
                    f"      <xmax>{int(math.ceil(x + bw))}</xmax>\n      <ymax>{int(math.ceil(y + bh))}</ymax>\n    </bndbox>\n  </object>\n")
    return (f"<annotation>\n  <folder>PASCAL VOC</folder>\n  <filename>{im.image_id}</filename>\n  <source>\n"
            f"    <database>MLBFR</database>\n  </source>\n  <size>\n    <width>{im.width}</width>\n"
            f"    <height>{im.height}</height>\n    <depth>3</depth>\n  </size>\n  <segmented>0</segmented>\n"
            f"{objects}</annotation>\n")


def _yolo(im: SynthImage) -> str:
    lines = []
    for p in im.fractures:
        x, y, bw, bh = _bbox(p)
        lines.append(f"0 {(x + bw / 2) / im.width:.6f} {(y + bh / 2) / im.height:.6f} {bw / im.width:.6f} {bh / im.height:.6f}")
    return "".join(line + "\n" for line in lines)


def _metadata(rng: np.random.Generator, fractured: int, n_fractures: int) -> dict[str, int]:
    part = int(rng.choice(5, p=[0.2, 0.5, 0.1, 0.15, 0.05]))
    row = {c: int(k == part) for k, c in enumerate(("hand", "leg", "hip", "shoulder", "mixed"))}
    row["hardware"] = int(rng.random() < (0.3 if fractured else 0.02))
    row["multiscan"] = int(rng.random() < 0.4)
    row["fractured"] = fractured
    row["fracture_count"] = n_fractures
    views = [int(rng.random() < p) for p in (0.6, 0.5, 0.2)]
    if not any(views):
        views[0] = 1
    row.update(zip(("frontal", "lateral", "oblique"), views, strict=True))
    return row


def _split_csvs(positives: list[str]) -> dict[str, str]:
    n = len(positives)
    n_train = max(1, round(n * 574 / 717))
    n_valid = max(1, round(n * 82 / 717))
    if n_train + n_valid >= n:
        n_train = max(1, n - n_valid - 1)
    blocks = {"train": positives[:n_train], "valid": positives[n_train : n_train + n_valid], "test": positives[n_train + n_valid :]}
    return {k: "image_id\r\n" + "".join(f"{i}\r\n" for i in v) for k, v in blocks.items()}


# --------------------------------------------------------------------------------------
# writing


def _write_tree(root: Path, plan: SynthPlan, rng: np.random.Generator) -> None:
    by_id = {im.image_id: im for im in plan.images}
    files: dict[str, bytes] = {}
    pos = set(plan.positives)
    many = [i for i in plan.positives if by_id[i].orientation == 1]
    # The positive with the most fractures (>= 2) loses one VGG polygon; another gets a wrong csv value.
    for image_id in plan.positives:
        im = by_id[image_id]
        n_frac = 2 if image_id == (many[0] if many else plan.positives[0]) else int(rng.choice([1, 1, 1, 2, 3]))
        display, im.fractures = render_bone(rng, im.width, im.height, n_frac)
        files[f"images/Fractured/{image_id}"] = _encode(display, im)
    for im in plan.images:
        if im.image_id in pos or im.duplicate_of:
            continue
        display, _ = render_bone(rng, im.width, im.height, 0)
        files[f"images/Non_fractured/{im.image_id}"] = _encode(display, im)
    for im in plan.images:
        if im.duplicate_of:
            folder = "Fractured" if im.duplicate_of in pos else "Non_fractured"
            files[f"images/Non_fractured/{im.image_id}"] = files[f"images/{folder}/{im.duplicate_of}"]
    multi = [i for i in plan.positives if len(by_id[i].fractures) >= 2]
    plan.vgg_missing = multi[0] if multi else None
    plan.csv_wrong = next((i for i in plan.positives if i != plan.vgg_missing and by_id[i].orientation == 1), None)

    header = "image_id,hand,leg,hip,shoulder,mixed,hardware,multiscan,fractured,fracture_count,frontal,lateral,oblique"
    lines = [header]
    cols = header.split(",")[1:]
    for im in plan.images:  # duplicates copy their source's row (same radiograph)
        if not im.duplicate_of or im.image_id == plan.positive_copy:
            plan.meta[im.image_id] = _metadata(rng, int(im.image_id in pos), len(im.fractures))
    for im in plan.images:
        if im.duplicate_of and im.image_id != plan.positive_copy:
            plan.meta[im.image_id] = dict(plan.meta[im.duplicate_of])
        meta = plan.meta[im.image_id]
        written = dict(meta, fractured=0 if im.image_id == plan.csv_wrong else meta["fractured"])
        lines.append(",".join([im.image_id] + [str(written[c]) for c in cols]))
    files["dataset.csv"] = ("\r\n".join(lines) + "\r\n").encode()

    sizes = {i: len(files[f"images/Fractured/{i}"]) for i in plan.positives}
    files["Annotations/COCO JSON/COCO_fracture_masks.json"] = json.dumps(_coco(plan, by_id)).encode()
    files["Annotations/VGG JSON/VGG_fracture_masks.json"] = json.dumps(_vgg(plan, by_id, sizes)).encode()
    for im in plan.images:
        stem = im.image_id[:-4]
        files[f"Annotations/PASCAL VOC/{stem}.xml"] = _voc(im).encode()
        files[f"Annotations/YOLO/{stem}.txt"] = _yolo(im).encode()
    files["Annotations/YOLO/labels.txt"] = b"fractured\r\n"
    for name, text in _split_csvs(plan.positives).items():
        files[f"Utilities/Fracture Split/{name}.csv"] = text.encode()
    for rel, data in sorted(files.items()):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def _zip_tree(folder: Path, dest: Path) -> None:
    """Zip ``folder`` as ``FracAtlas/...`` with fixed timestamps (byte-identical output)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for path in sorted(folder.rglob("*")):
            rel = "FracAtlas/" + path.relative_to(folder).as_posix()
            if path.is_dir():
                zf.writestr(zipfile.ZipInfo(rel + "/", ZIP_DATE), b"")
                continue
            info = zipfile.ZipInfo(rel, ZIP_DATE)
            info.compress_type = zipfile.ZIP_STORED if rel.endswith(".jpg") else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())


def make_synthetic_archive(
    out: str | os.PathLike[str],
    n_images: int = 64,
    seed: int = 0,
    as_zip: bool = False,
    large_fraction: float = 0.1,
    positive_fraction: float = 0.2,
    scale: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic FracAtlas archive and return its path.

    ``as_zip=False``: ``out`` is a folder that receives ``FracAtlas/``; ``as_zip=True``: ``out``
    is the zip file (members under ``FracAtlas/``). ``scale`` multiplies both size regimes
    (373x454 / 454x373 and 2304x2880 / 2880x2304 px); tests use ~0.2 for tiny images.
    Written atomically (temp then rename). The plan is reproduced by ``plan_synthetic``.
    """
    make_synthetic(out, n_images, seed, as_zip, large_fraction, positive_fraction, scale, overwrite)
    return Path(out)


def make_synthetic(
    out: str | os.PathLike[str], n_images: int = 64, seed: int = 0, as_zip: bool = False,
    large_fraction: float = 0.1, positive_fraction: float = 0.2, scale: float = 1.0, overwrite: bool = False,
) -> SynthPlan:
    """Like ``make_synthetic_archive`` but returns the plan with every image's ground truth."""
    out = Path(out).expanduser()
    target = out if as_zip else out / "FracAtlas"
    if target.exists() and not overwrite:
        raise DataError(f"{target} already exists", "choose another OUT or remove it")
    plan = plan_synthetic(n_images, seed, large_fraction, positive_fraction, scale)
    rng = np.random.default_rng([seed, 1])
    parent = out.parent if as_zip else out
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".synth.", dir=parent))
    try:
        _write_tree(work / "FracAtlas", plan, rng)
        if as_zip:
            tmp_zip = work / "archive.zip"
            _zip_tree(work / "FracAtlas", tmp_zip)
            os.replace(tmp_zip, out)
        else:
            if target.exists():
                shutil.rmtree(target)
            os.replace(work / "FracAtlas", target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return plan
