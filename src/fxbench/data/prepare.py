"""``fxbench prepare``: archive -> masks, manifest, split, report and letterboxed caches.

Outputs (docs/internals.md): ``OUT/manifest.csv``, ``OUT/masks/<stem>.png`` (native size,
0/255), ``OUT/prepare_report.json``, ``OUT/cache/<S>.npz``. Every file is written under a
temporary name and renamed, the masks folder is swapped in whole, and a state file
(``OUT/.prepare_state.json``) written last makes a rerun with unchanged inputs a no-op: a
crash at any point leaves either the previous outputs or none under the final names.

Each image is decoded exactly once, in worker processes: grey pixels in the EXIF frame, a
pixel hash (duplicates), the native mask and every requested cache size come from that one
decode. Splitting needs only the per-image records, so changing ``--split-mode`` or
``--seed`` later rewrites the manifest without decoding anything.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.data.boxes import BOXES_FILE, boxes_document, boxes_summary, image_boxes
from fxbench.data.cache import (
    CACHE_FORMATS,
    GEOMETRIES,
    JPEG_QUALITY,
    CacheWriter,
    all_caches,
    cache_key,
    encode_jpeg,
    encode_png_mask,
    parse_cache_key,
    to_cache_frame,
)
from fxbench.data.decode import ImageDecodeError, decode_image
from fxbench.data.folds import assign_folds, check_folds, fold_summary
from fxbench.data.fracatlas import (
    BOX_SOURCES,
    META_COLUMNS,
    POLYGON_SOURCES,
    DatasetSource,
    Layout,
    Polygon,
    Warnings,
    box_count,
    check_polygon_bounds,
    choose_polygon_source,
    pixel_hash,
    polygon_count,
    rasterize,
    read_layout,
)
from fxbench.data.report import PrepareReport
from fxbench.data.splits import (
    SPLIT_MODES,
    TRAIN_RATIO,
    VAL_RATIO,
    check_ratios,
    grouped_split,
    official_split,
    seed_split,
    split_summary,
)
from fxbench.errors import ConfigError, DataError
from fxbench.io import sha256_bytes, sha256_file, write_csv_atomic, write_json_atomic

#: Bump when masks, records or caches would come out differently for the same input.
DATA_VERSION = "fxbench-prepare-1"
STATE_FILE = ".prepare_state.json"
MANIFEST_COLUMNS = (
    "image_id", "label", "split", "width", "height", *META_COLUMNS, "csv_fractured", "duplicate_group",
    "image_path", "mask_path", "polygon_source", "exif_orientation", "truncated", "fold",
)
MIN_CACHE, MAX_CACHE = 16, 4096

#: progress(stage, done, total): stages are "read", "decode", "write".
Progress = Callable[[str, int, int], None]


@dataclass
class ImagePlan:
    """What to do with one image before decoding it."""

    image_id: str
    relpath: str
    counts: dict[str, int | None]  # coco, vgg, voc, yolo
    source: str | None  # polygon source chosen for rasterization
    fractures: list[list[Polygon]]  # the chosen source's fractures (rings each)


@dataclass
class PrepareResult:
    out: Path
    report: dict[str, Any]
    skipped: bool = False  # True when everything was already up to date
    rebuilt: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------
# planning


def build_plan(layout: Layout) -> list[ImagePlan]:
    """One ImagePlan per dataset.csv row that has an image, sorted by image_id."""
    plans = []
    stems: dict[str, str] = {}
    for row in layout.rows:
        rel = layout.images.get(row.image_id)
        if rel is None:
            continue
        stem = Path(row.image_id).stem
        if stem in stems:
            layout.warnings.add("stem_collision", row.image_id, f"same mask name as {stems[stem]}; image skipped")
            continue
        stems[stem] = row.image_id
        counts: dict[str, int | None] = {s: polygon_count(layout, s, row.image_id) for s in POLYGON_SOURCES}
        counts.update({s: box_count(layout, s, row.image_id) for s in BOX_SOURCES})
        source = choose_polygon_source(
            {s: counts[s] for s in POLYGON_SOURCES}, row.meta.get("fracture_count"), {s: counts[s] for s in BOX_SOURCES}
        )
        fractures = list(layout.polygons[source].get(row.image_id, [])) if source else []
        plans.append(ImagePlan(row.image_id, rel, counts, source, fractures))
    plans.sort(key=lambda p: p.image_id)
    if not plans:
        raise DataError(f"{layout.source.path}: none of the {len(layout.rows)} dataset.csv rows has an image file", "check the images/ folder of the archive")
    return plans


# --------------------------------------------------------------------------------------
# the decode pass (worker processes)

_WORKER: dict[str, Any] = {}


def _init_worker(source: DatasetSource, caches: tuple[tuple[str, str], ...], masks_dir: str | None,
                 jpeg_quality: int = JPEG_QUALITY) -> None:
    """Per-process state: the source, the caches to fill ((key, format), ...; key as
    :func:`fxbench.data.cache.cache_key`), the masks folder."""
    _WORKER.clear()
    _WORKER.update(source=source, caches=caches, masks_dir=masks_dir, jpeg_quality=jpeg_quality)


def _process(task: tuple[str, str, list[list[Polygon]]]) -> dict[str, Any]:
    """Decode one image and derive everything from it. Never raises: errors are returned."""
    image_id, rel, fractures = task
    try:
        return _process_unsafe(image_id, rel, fractures)
    except (DataError, ImageDecodeError) as err:
        return {"image_id": image_id, "error": str(err), "warnings": []}
    except Exception as err:  # noqa: BLE001 - a hostile file must cost one image, not the run
        return {"image_id": image_id, "error": f"{image_id}: unexpected {type(err).__name__}: {err}", "warnings": []}


def _process_unsafe(image_id: str, rel: str, fractures: list[list[Polygon]]) -> dict[str, Any]:
    src: DatasetSource = _WORKER["source"]
    data = src.read_bytes(rel)
    dec = decode_image(data, image_id)
    height, width = dec.pixels.shape
    warnings: list[dict[str, str]] = []
    kept: list[Polygon] = []
    drawn = 0
    for k, rings in enumerate(fractures):
        ok = []
        for ring in rings:
            why = check_polygon_bounds(ring, height, width)
            if why:
                warnings.append({"kind": "polygon_out_of_bounds", "where": f"{image_id} fracture {k}", "message": f"{why}; polygon skipped"})
            else:
                ok.append(ring)
        kept.extend(ok)
        drawn += bool(ok)
    mask = rasterize(kept, height, width) if kept else np.zeros((height, width), bool)
    if _WORKER["masks_dir"]:
        _write_mask(Path(_WORKER["masks_dir"]) / f"{Path(image_id).stem}.png", mask)
    caches = {}
    for key, fmt in _WORKER["caches"]:
        size, geometry = _parse_key(key)
        img, m, box = to_cache_frame(dec.pixels, mask, size, geometry)
        if fmt == "raw":
            caches[key] = (img.tobytes(), zlib.compress(m.tobytes(), 1), box)
        else:
            caches[key] = (encode_jpeg(img, _WORKER["jpeg_quality"]), encode_png_mask(m), box)
    return {
        "image_id": image_id, "error": None, "warnings": warnings,
        "width": width, "height": height, "orientation": dec.orientation, "truncated": dec.truncated,
        "strict_failed": dec.strict_failed, "mode": dec.mode, "pixel_hash": pixel_hash(dec.pixels),
        "file_sha256": sha256_bytes(data), "mask_pixels": int(mask.sum()), "fractures_drawn": drawn,
        "caches": caches,
    }


def _write_mask(path: Path, mask: np.ndarray) -> None:
    """Native mask as 8-bit 0/255 PNG. Empty masks of one shape are byte-identical, so their
    encoding is reused (most images are negatives; a 2880x2304 PNG costs ~20 ms to encode)."""
    from PIL import Image

    empty = _WORKER.setdefault("empty_png", {})
    if not mask.any() and mask.shape in empty:
        path.write_bytes(empty[mask.shape])
        return
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    data = buf.getvalue()
    if not mask.any():
        empty[mask.shape] = data
    path.write_bytes(data)


def _results(tasks: list[tuple[str, str, list[list[Polygon]]]], init_args: tuple[Any, ...], workers: int):
    """Yield worker results in task order (inline when workers <= 1)."""
    if workers <= 1 or len(tasks) < 2:
        _init_worker(*init_args)
        try:
            yield from map(_process, tasks)
        finally:
            _WORKER.clear()
        return
    import multiprocessing

    # spawn: safe even when the parent has threads (torch, BLAS); workers import only numpy/PIL.
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_process, tasks, chunksize=max(1, min(16, len(tasks) // (workers * 8) or 1)))


def _decode_pass(
    layout: Layout,
    plans: list[ImagePlan],
    out: Path,
    requests: dict[str, str],
    write_masks: bool,
    workers: int,
    progress: Progress | None,
    jpeg_quality: int = JPEG_QUALITY,
) -> tuple[dict[str, dict[str, Any]], Path | None, dict[str, Path]]:
    """Decode every planned image once, filling the caches ``requests`` ({cache key: format}).

    Returns (records by image_id, temp masks folder or None, {cache key: temp cache file}). Temp
    outputs are removed if anything fails.
    """
    masks_tmp = Path(tempfile.mkdtemp(prefix=".masks.", suffix=".tmp", dir=out)) if write_masks else None
    (out / "cache").mkdir(exist_ok=True)
    ids = [p.image_id for p in plans]
    tmp_caches: dict[str, Path] = {}
    writers: dict[str, CacheWriter] = {}
    records: dict[str, dict[str, Any]] = {}
    try:
        for key, fmt in requests.items():
            size, geometry = _parse_key(key)
            fd, name = tempfile.mkstemp(prefix=f".{key}.", suffix=".npz.tmp", dir=out / "cache")
            os.close(fd)
            tmp_caches[key] = Path(name)
            writers[key] = CacheWriter(name, ids, size, fmt, geometry)
        tasks = [(p.image_id, p.relpath, p.fractures) for p in plans]
        init_args = (layout.source, tuple(requests.items()), str(masks_tmp) if masks_tmp else None, jpeg_quality)
        blank = _blank_payloads(requests)
        for done, res in enumerate(_results(tasks, init_args, workers), start=1):
            caches = res.pop("caches", None) or blank
            for key, writer in writers.items():
                payload_img, payload_mask, box = caches[key]
                writer.add_encoded(payload_img, payload_mask, box, (res.get("height", 0), res.get("width", 0)))
            records[res["image_id"]] = res
            if progress:
                progress("decode", done, len(tasks))
        for writer in writers.values():
            writer.close()
        failed = {i for i, r in records.items() if r["error"]}
        if failed:
            for key, path in tmp_caches.items():
                _drop_items(path, failed, requests[key], _parse_key(key)[1])
    except BaseException:
        for writer in writers.values():
            writer.abort()
        for path in tmp_caches.values():
            path.unlink(missing_ok=True)
        if masks_tmp:
            shutil.rmtree(masks_tmp, ignore_errors=True)
        raise
    return records, masks_tmp, tmp_caches


def _parse_key(key: str) -> tuple[int, str]:
    parsed = parse_cache_key(key)
    if parsed is None:
        raise ValueError(f"bad cache key {key!r}")
    return parsed


def _blank_payloads(requests: dict[str, str]) -> dict[str, tuple[bytes, bytes, tuple[int, int, int, int]]]:
    """Placeholders for images that failed to decode (dropped again before the rename)."""
    out = {}
    for key, fmt in requests.items():
        size, _ = _parse_key(key)
        zero = np.zeros((size, size), np.uint8)
        if fmt == "raw":
            out[key] = (zero.tobytes(), zlib.compress(zero.tobytes(), 1), (0, 0, 0, 0))
        else:
            out[key] = (encode_jpeg(zero), encode_png_mask(zero), (0, 0, 0, 0))
    return out


def _drop_items(path: Path, drop: set[str], fmt: str, geometry: str = "letterbox") -> None:
    """Rewrite a temp cache without the items in ``drop`` (rare: undecodable images)."""
    with np.load(path, allow_pickle=False) as z:
        ids = [str(s) for s in z["image_ids"]]
        keep = [k for k, i in enumerate(ids) if i not in drop]
        size = int(z["size"])
        boxes, native_hw = z["boxes"], z["native_hw"]
        if fmt == "raw":
            images, masks = z["images"], z["masks"]
            items = [(images[k].tobytes(), zlib.compress(masks[k].tobytes(), 1)) for k in keep]
        else:
            ib, io_, mb, mo = z["images_blob"], z["images_offsets"], z["masks_blob"], z["masks_offsets"]
            items = [(ib[io_[k] : io_[k + 1]].tobytes(), mb[mo[k] : mo[k + 1]].tobytes()) for k in keep]
    if not keep:
        raise DataError(f"none of the {len(ids)} images could be decoded", "see the warnings; the archive may be corrupt")
    writer = CacheWriter(path, [ids[k] for k in keep], size, fmt, geometry)
    for (img, mask), k in zip(items, keep, strict=True):
        writer.add_encoded(img, mask, boxes[k], native_hw[k])
    writer.close()


# --------------------------------------------------------------------------------------
# state (idempotency)


def _load_state(out: Path) -> dict[str, Any] | None:
    try:
        state = json.loads((out / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("data_version") == DATA_VERSION else None


def _file_stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _cache_valid(out: Path, state: dict[str, Any] | None, fingerprint: str, key: str, fmt: str,
                 jpeg_quality: int | None = None) -> bool:
    """Whether cache ``key`` is up to date; ``jpeg_quality`` None accepts a jpeg cache of any quality."""
    if not state:
        return False
    entry = state.get("caches", {}).get(key)
    path = out / "cache" / f"{key}.npz"
    if not entry or not path.is_file() or entry.get("fingerprint") != fingerprint or entry.get("format") != fmt:
        return False
    if fmt == "jpeg" and jpeg_quality is not None and entry.get("jpeg_quality", JPEG_QUALITY) != jpeg_quality:
        return False
    return _file_stamp(path) == {"bytes": entry.get("bytes"), "mtime_ns": entry.get("mtime_ns")}


def _masks_complete(out: Path, records: dict[str, dict[str, Any]]) -> bool:
    folder = out / "masks"
    if not folder.is_dir():
        return False
    have = {p.name for p in folder.iterdir()}
    return all(f"{Path(i).stem}.png" in have for i, r in records.items() if not r.get("error"))


# --------------------------------------------------------------------------------------
# findings: labels, disagreements, duplicates


def _folder_label(folder: str) -> int | None:
    low = folder.lower()
    return 0 if low.startswith("non") else 1 if low.startswith("fract") else None


def _ring_key(ring: Polygon) -> tuple[float, ...]:
    """A ring without its closing vertex (VIA repeats the first point), rounded to 0.01 px."""
    pts = [(round(ring[i], 2), round(ring[i + 1], 2)) for i in range(0, len(ring), 2)]
    if len(pts) > 3 and pts[0] == pts[-1]:
        pts = pts[:-1]
    return tuple(c for p in pts for c in p)


def _same_shapes(layout: Layout, image_id: str) -> bool:
    """Do COCO and VGG hold the same polygons for ``image_id`` (when both have some)?"""
    shapes = [sorted(_ring_key(r) for f in layout.polygons[s].get(image_id, []) for r in f) for s in POLYGON_SOURCES if s in layout.polygons]
    return len(shapes) < 2 or shapes[0] == shapes[1]


def _disagreements(
    layout: Layout, plans: list[ImagePlan], records: dict[str, dict[str, Any]], mixed_groups: list[list[str]]
) -> list[dict[str, Any]]:
    """One entry per image where the evidence does not agree with itself or with the label.

    ``mixed_groups``: pixel-identical images with different labels; their unannotated members
    are listed too (same radiograph, annotated once: the label stays from its own annotations).
    """
    rows = {r.image_id: r for r in layout.rows}
    twin_of: dict[str, list[str]] = {}
    for group in mixed_groups:
        positives = [i for i in group if records[i]["mask_pixels"] > 0]
        for i in group:
            if i not in positives:
                twin_of[i] = positives
    out = []
    for plan in plans:
        rec = records[plan.image_id]
        if rec.get("error"):
            continue
        row = rows[plan.image_id]
        label = int(rec["mask_pixels"] > 0)
        fc = row.meta.get("fracture_count")
        counts = {"fracture_count": fc, **plan.counts}
        present = {k: v for k, v in counts.items() if v is not None}
        issues = []
        if len(set(present.values())) > 1:
            parts = ", ".join(f"{k}={v}" for k, v in present.items())
            issues.append(f"annotation counts differ ({parts}); rasterized {plan.source}")
        elif not _same_shapes(layout, plan.image_id):
            issues.append(f"COCO and VGG have the same count but different polygon shapes; rasterized {plan.source}")
        if plan.source and fc is not None and plan.counts[plan.source] != fc:
            issues.append(f"no polygon source matches fracture_count={fc}")
        if rec["fractures_drawn"] < len(plan.fractures):
            issues.append(f"{len(plan.fractures) - rec['fractures_drawn']} polygon(s) outside the image were dropped")
        if row.fractured is not None and row.fractured != label:
            issues.append(f"csv fractured={row.fractured} but the annotations say {label}")
        folder_label = _folder_label(layout.folders.get(plan.image_id, ""))
        if folder_label is not None and folder_label != label:
            issues.append(f"in folder {layout.folders[plan.image_id]} but the annotations say {label}")
        if fc is not None and (fc > 0) != bool(label):
            issues.append(f"fracture_count={fc} but the label is {label}")
        if plan.image_id in twin_of:
            issues.append(f"pixel-identical to fractured {', '.join(twin_of[plan.image_id])} but has no annotation")
        declared = layout.declared_sizes.get(plan.image_id)
        if declared and tuple(declared) != (rec["width"], rec["height"]):
            issues.append(f"COCO size {declared[0]}x{declared[1]} differs from the decoded {rec['width']}x{rec['height']}")
        if issues:
            out.append({
                "image_id": plan.image_id, "issues": issues, "counts": counts, "csv_fractured": row.fractured,
                "folder": layout.folders.get(plan.image_id, ""), "label": label, "source": plan.source,
            })
    return out


def _groups(records: dict[str, dict[str, Any]], key: str) -> dict[str, list[str]]:
    """Map a hash key -> sorted image_ids sharing it (all images, singletons included)."""
    by: dict[str, list[str]] = {}
    for image_id in sorted(records):
        rec = records[image_id]
        if not rec.get("error"):
            by.setdefault(rec[key], []).append(image_id)
    return by


# --------------------------------------------------------------------------------------
# main entry


def _check_args(split_mode: str, cache_sizes: Sequence[int] | None, cache_format: str, seed: int) -> tuple[int, ...] | None:
    if split_mode not in SPLIT_MODES:
        raise ConfigError(f"unknown split mode {split_mode!r}", f"use one of {', '.join(SPLIT_MODES)}")
    if cache_format not in CACHE_FORMATS:
        raise ConfigError(f"unknown cache format {cache_format!r}", f"use one of {', '.join(CACHE_FORMATS)}")
    if cache_sizes is None:
        return None
    sizes = tuple(sorted({int(s) for s in cache_sizes}))
    bad = [s for s in sizes if not MIN_CACHE <= s <= MAX_CACHE]
    if bad:
        raise ConfigError(f"cache size {bad[0]} is out of range", f"use {MIN_CACHE}..{MAX_CACHE} pixels, e.g. --cache-size 512")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"seed must be an integer, got {seed!r}")
    return sizes


def _cache_requests(out: Path, sizes: tuple[int, ...] | None, fmt: str, geometry: str = "letterbox") -> dict[str, str]:
    """{cache key: format} to have after this run (see ``prepare``'s ``cache_sizes``)."""
    if sizes is not None:
        return {cache_key(s, geometry): fmt for s in sizes}
    old = (_load_state(out) or {}).get("caches", {})
    have = {str(k): e.get("format", "raw") for k, e in old.items() if isinstance(e, dict) and parse_cache_key(str(k))}
    return dict(sorted(have.items(), key=lambda kv: _sort_key(kv[0]))) or {cache_key(512, geometry): fmt}


def _sort_key(key: str) -> tuple[int, int]:
    size, geometry = _parse_key(key)
    return size, GEOMETRIES.index(geometry)


def _swap_in_masks(out: Path, masks_tmp: Path) -> None:
    final = out / "masks"
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=".masks.old.", dir=out))
        os.replace(final, old / "masks")
    os.replace(masks_tmp, final)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def _cleanup_stale(out: Path) -> None:
    """Remove temp leftovers of an earlier crashed run (names we create, never others)."""
    for p in list(out.glob(".masks.*")) + list((out / "cache").glob(".*.npz.tmp")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def prepare(
    archive: str | os.PathLike[str],
    out: str | os.PathLike[str],
    split_mode: str = "grouped",
    seed: int = 42,
    cache_sizes: Sequence[int] | None = (512,),
    cache_format: str = "raw",
    force: bool = False,
    workers: int | None = None,
    progress: Progress | None = None,
    resize: str = "letterbox",
    train_ratio: float = TRAIN_RATIO,
    val_ratio: float = VAL_RATIO,
    folds: int | None = None,
    jpeg_quality: int | None = None,
) -> PrepareResult:
    """Prepare a FracAtlas-layout ``archive`` (zip or folder) into ``out``.

    Writes masks at native resolution (0/255 PNG), manifest.csv, prepare_report.json and one
    cache per size (``raw`` uint8 arrays or compact ``jpeg``), in the ``resize`` geometry
    (``letterbox`` -> ``cache/<S>.npz``, ``stretch`` -> ``cache/<S>-stretch.npz``). Idempotent:
    with unchanged inputs and options nothing is redone (``force`` redoes everything).
    ``workers``: decode processes (default: all cores; 1 = in this process).

    ``cache_sizes`` are built in ``cache_format``; caches of other sizes or geometries already
    in ``out`` are kept. ``cache_sizes=None`` keeps the folder's caches as they are (each in its
    own format, rebuilt only if the inputs changed), or builds 512 px when there are none.
    ``train_ratio`` / ``val_ratio`` (seed and grouped modes; default the seed's 0.70 / 0.15) are
    recorded in the report. ``folds`` K (2..20) also assigns every image to one of K
    cross-validation folds (:mod:`fxbench.data.folds`: the manifest's ``fold`` column, the
    report's ``folds``).

    ``jpeg_quality`` (1..100) of jpeg caches built now; None = 95, and an existing jpeg cache of
    any quality counts as up to date. A given quality rebuilds jpeg caches made at another one.
    """
    sizes = _check_args(split_mode, cache_sizes, cache_format, seed)
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ConfigError(f"JPEG quality {jpeg_quality} is out of range", "use 1..100, e.g. --jpeg-quality 85")
    if resize not in GEOMETRIES:
        raise ConfigError(f"unknown resize {resize!r}", f"use one of {', '.join(GEOMETRIES)}")
    check_ratios(train_ratio, val_ratio)
    if folds is not None:
        check_folds(folds)
    ratios = (float(train_ratio), float(val_ratio))
    if split_mode == "official" and ratios != (TRAIN_RATIO, VAL_RATIO):
        raise ConfigError(
            "--train-ratio/--val-ratio apply to the seed and grouped split modes",
            "the official split is fixed by FracAtlas; drop the ratios or use --split-mode seed|grouped",
        )
    t0 = time.perf_counter()
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} exists and is not a folder", "choose another --out")
    if progress:
        progress("read", 0, 1)
    layout = read_layout(archive)
    try:
        return _prepare_layout(layout, out, split_mode, seed, sizes, cache_format, force, workers, progress, t0,
                               resize, ratios, folds, jpeg_quality)
    finally:
        layout.source.close()


def _prepare_layout(
    layout: Layout, out: Path, split_mode: str, seed: int, sizes: tuple[int, ...] | None, fmt: str,
    force: bool, workers: int | None, progress: Progress | None, t0: float,
    resize: str = "letterbox", ratios: tuple[float, float] = (TRAIN_RATIO, VAL_RATIO), folds: int | None = None,
    jpeg_quality: int | None = None,
) -> PrepareResult:
    fingerprint = sha256_bytes(f"{DATA_VERSION}\n{layout.source.fingerprint()}".encode())
    plans = build_plan(layout)
    t_read = time.perf_counter() - t0
    if progress:
        progress("read", 1, 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cache").mkdir(exist_ok=True)
    _cleanup_stale(out)
    old_state = _load_state(out)
    if old_state and old_state.get("fingerprint") != fingerprint:
        old_state = None
    state = None if force else old_state
    records = (state or {}).get("records")
    need_masks = records is None or not _masks_complete(out, records)
    requests = _cache_requests(out, sizes, fmt, resize)
    need = {s: f for s, f in requests.items() if not _cache_valid(out, state, fingerprint, s, f, jpeg_quality)}
    quality = JPEG_QUALITY if jpeg_quality is None else jpeg_quality
    params: dict[str, Any] = {"split_mode": split_mode, "seed": seed}
    if ratios != (TRAIN_RATIO, VAL_RATIO):  # only then: folders prepared before the option stay up to date
        params["ratios"] = list(ratios)
    if folds:  # likewise
        params["folds"] = folds
    if (not need_masks and not need and state and state.get("split") == params
            and (out / "manifest.csv").is_file() and (out / "prepare_report.json").is_file()
            and (out / BOXES_FILE).is_file()):
        report = json.loads((out / "prepare_report.json").read_text(encoding="utf-8"))
        return PrepareResult(out, report, skipped=True)

    (out / STATE_FILE).unlink(missing_ok=True)  # outputs change from here: no stale "up to date"
    # Kept even with --force: caches of sizes not rebuilt now stay valid for the same inputs.
    cache_state: dict[str, Any] = dict((old_state or {}).get("caches", {}))
    rebuilt: list[str] = []
    t1 = time.perf_counter()
    n_workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), len(plans)))
    if need_masks or need:
        records, masks_tmp, tmp_caches = _decode_pass(layout, plans, out, need, need_masks, n_workers, progress,
                                                      quality)
        if masks_tmp:
            _swap_in_masks(out, masks_tmp)
            rebuilt.append("masks")
        for key, tmp in tmp_caches.items():
            final = out / "cache" / f"{key}.npz"
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a cache is meant to be shared and copied
            os.replace(tmp, final)
            cache_state[key] = {"format": need[key], "geometry": _parse_key(key)[1], "fingerprint": fingerprint,
                                "sha256": sha256_file(final), **_file_stamp(final)}
            if need[key] == "jpeg":
                cache_state[key]["jpeg_quality"] = quality
            rebuilt.append(f"cache/{key}.npz")
    assert records is not None
    t_decode = time.perf_counter() - t1
    # Caches built from other inputs would silently disagree with the new masks: remove them.
    for key, path in all_caches(out).items():
        entry = cache_state.get(key)
        if not entry or entry.get("fingerprint") != fingerprint:
            path.unlink(missing_ok=True)
            cache_state.pop(key, None)
    if progress:
        progress("write", 0, 1)
    t2 = time.perf_counter()
    report, manifest = _findings(layout, plans, records, split_mode, seed, out, cache_state, ratios, folds)
    boxes_doc = _gt_boxes(layout, plans, records, report)
    report["timings_s"] = {
        "read_layout": round(t_read, 2), "decode": round(t_decode, 2),
        "split_and_write": round(time.perf_counter() - t2, 2), "total": round(time.perf_counter() - t0, 2),
    }
    report["workers"] = n_workers
    report["rebuilt"] = rebuilt
    write_csv_atomic(out / "manifest.csv", manifest, MANIFEST_COLUMNS)
    write_json_atomic(out / BOXES_FILE, boxes_doc)
    write_json_atomic(out / "prepare_report.json", report)
    write_json_atomic(out / STATE_FILE, {
        "data_version": DATA_VERSION, "fingerprint": fingerprint, "split": params,
        "caches": cache_state, "records": records,
    })
    if progress:
        progress("write", 1, 1)
    return PrepareResult(out, report, skipped=False, rebuilt=rebuilt)


def _gt_boxes(layout: Layout, plans: list[ImagePlan], records: dict[str, dict[str, Any]], report: dict[str, Any]) -> dict[str, Any]:
    """Ground-truth boxes of every decoded image (fxbench.data.boxes); adds ``gt_boxes`` and
    ``box_disagreements`` to ``report`` and returns the body of ``boxes.json``."""
    per_image = {
        p.image_id: image_boxes(Path(p.image_id).stem, layout.box_coords, p.fractures,
                                records[p.image_id]["width"], records[p.image_id]["height"])
        for p in plans if not records[p.image_id].get("error")
    }
    report["gt_boxes"], report["box_disagreements"] = boxes_summary(per_image)
    return boxes_document(per_image)


def _compute_splits(
    layout: Layout, ok_ids: list[str], labels: dict[str, int], group_of: dict[str, str], seed: int,
    ratios: tuple[float, float] = (TRAIN_RATIO, VAL_RATIO),
) -> dict[str, dict[str, str]]:
    """Every split mode the archive allows: {mode: {image_id: split}} over ``ok_ids``
    (``ratios`` = (train, val) for the seed and grouped modes)."""
    ok = set(ok_ids)
    modes: dict[str, dict[str, str]] = {}
    if all(r.fractured is not None for r in layout.rows):
        full = seed_split([(r.image_id, int(r.fractured or 0)) for r in layout.rows], seed, *ratios)
        modes["seed"] = {i: s for i, s in full.items() if i in ok}
    if layout.official_split:
        modes["official"] = official_split([(i, labels[i]) for i in ok_ids], layout.official_split, seed)
    modes["grouped"] = grouped_split([(i, labels[i], group_of[i]) for i in ok_ids], seed, *ratios)
    return modes


def _findings(
    layout: Layout, plans: list[ImagePlan], records: dict[str, dict[str, Any]], split_mode: str, seed: int,
    out: Path, cache_state: dict[str, Any], ratios: tuple[float, float] = (TRAIN_RATIO, VAL_RATIO),
    folds: int | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Labels, disagreements, duplicates and splits -> (report, manifest rows)."""
    from fxbench._version import __version__

    warnings = Warnings()
    warnings.extend(layout.warnings.items)
    for kind, n in layout.warnings.counts.items():  # counts beyond the kept items
        warnings.counts[kind] = n
    skipped = []
    for plan in plans:
        rec = records[plan.image_id]
        warnings.extend(rec.get("warnings", []))
        if rec.get("error"):
            warnings.add("image_skipped", plan.image_id, rec["error"])
            skipped.append({"image_id": plan.image_id, "reason": rec["error"]})
    ok_plans = [p for p in plans if not records[p.image_id].get("error")]
    if not ok_plans:
        raise DataError(f"none of the {len(plans)} images could be decoded (first: {skipped[0]['reason']})", "the archive may be corrupt: download it again")
    ok_ids = [p.image_id for p in ok_plans]
    labels = {i: int(records[i]["mask_pixels"] > 0) for i in ok_ids}
    pixel_groups = _groups(records, "pixel_hash")
    group_of = {i: members[0] for members in pixel_groups.values() for i in members}
    dup_groups = [g for g in pixel_groups.values() if len(g) > 1]
    byte_groups = [g for g in _groups(records, "file_sha256").values() if len(g) > 1]
    mixed = [g for g in dup_groups if len({labels[i] for i in g}) > 1]
    for g in mixed:
        warnings.add("duplicate_mixed_labels", ", ".join(g), "pixel-identical images with different labels")

    modes = _compute_splits(layout, ok_ids, labels, group_of, seed, ratios)
    if split_mode not in modes:
        why = {"seed": "dataset.csv has rows without a 0/1 'fractured' value",
               "official": "the archive has no Utilities/Fracture Split/{train,valid,test}.csv"}[split_mode]
        raise DataError(f"split mode '{split_mode}' is not possible: {why}", "use --split-mode grouped")
    summaries = {m: split_summary(s, labels, dup_groups) for m, s in modes.items()}
    splits = modes[split_mode]
    fold_items = [(i, labels[i], group_of[i]) for i in ok_ids]
    fold_of = assign_folds(fold_items, folds, seed) if folds else {}

    rows = {r.image_id: r for r in layout.rows}
    manifest = []
    for plan in ok_plans:
        rec, row = records[plan.image_id], rows[plan.image_id]
        manifest.append({
            "image_id": plan.image_id, "label": labels[plan.image_id], "split": splits[plan.image_id],
            "width": rec["width"], "height": rec["height"],
            **{c: "" if row.meta.get(c) is None else row.meta[c] for c in META_COLUMNS},
            "csv_fractured": "" if row.fractured is None else row.fractured,
            "duplicate_group": group_of[plan.image_id], "image_path": plan.relpath,
            "mask_path": f"masks/{Path(plan.image_id).stem}.png",
            "polygon_source": (plan.source or "") if labels[plan.image_id] else "",
            "exif_orientation": rec["orientation"], "truncated": int(rec["truncated"]),
            "fold": fold_of.get(plan.image_id, ""),
        })

    ok_records = [records[i] for i in ok_ids]
    rotated = [i for i in ok_ids if records[i]["orientation"] != 1]
    truncated = [i for i in ok_ids if records[i]["truncated"]]
    sizes: dict[str, int] = {}
    for rec in ok_records:
        key = f"{rec['width']}x{rec['height']}"
        sizes[key] = sizes.get(key, 0) + 1
    disagreements = _disagreements(layout, plans, records, mixed)
    stems = {Path(p.image_id).stem for p in plans}
    fractured_csv = [r.fractured for r in layout.rows if r.fractured is not None]
    report = PrepareReport(
        fxbench_version=__version__,
        data_version=DATA_VERSION,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        archive=str(layout.source.path.resolve()),
        archive_root=layout.source.prefix,
        archive_fingerprint=layout.source.fingerprint(),
        images=len(ok_ids),
        fractured=sum(labels.values()),
        non_fractured=len(ok_ids) - sum(labels.values()),
        csv_rows=len(layout.rows),
        csv_fractured=sum(fractured_csv),
        fracture_count_total=sum(rows[i].meta.get("fracture_count") or 0 for i in ok_ids),
        polygons={s: sum(len(layout.polygons[s].get(p.image_id, [])) for p in plans) for s in layout.polygons},
        boxes={s: sum(v for k, v in layout.boxes[s].items() if k in stems) for s in layout.boxes},
        polygons_rasterized=sum(records[i]["fractures_drawn"] for i in ok_ids),
        rasterized_from={s: sum(1 for p in ok_plans if p.source == s and labels[p.image_id]) for s in POLYGON_SOURCES if s in layout.polygons},
        annotation_files=layout.files_found,
        exif_rotated=len(rotated),
        exif_rotated_ids=rotated,
        exif_orientations=_count(str(records[i]["orientation"]) for i in rotated),
        exif_rotated_fractured_ids=[i for i in rotated if labels[i]],
        truncated=len(truncated),
        truncated_ids=truncated,
        truncated_strict_decode_failed=sum(1 for i in truncated if records[i]["strict_failed"]),
        truncated_fractured_ids=[i for i in truncated if labels[i]],
        image_modes=_count(rec["mode"] for rec in ok_records),
        image_sizes=dict(sorted(sizes.items(), key=lambda kv: -kv[1])),
        duplicate_groups=len(dup_groups),
        duplicate_images=sum(len(g) for g in dup_groups),
        duplicate_group_members=dup_groups,
        byte_identical_groups=len(byte_groups),
        duplicate_groups_mixed_labels=mixed,
        split_mode=split_mode,
        seed=seed,
        split_ratios={"train": ratios[0], "val": ratios[1], "test": round(1 - ratios[0] - ratios[1], 6)},
        **summaries[split_mode],
        split_modes={m: {k: v for k, v in s.items() if k != "cross_split_duplicate_group_members"} for m, s in summaries.items()},
        folds=fold_summary(fold_items, fold_of, folds, seed, dup_groups) if folds else None,
        disagreements=disagreements,
        disagreement_count=len(disagreements),
        skipped_images=skipped,
        warnings_count=len(warnings),
        warnings_by_kind=dict(sorted(warnings.counts.items())),
        warnings=warnings.items,
        caches={k: {kk: vv for kk, vv in v.items() if kk != "mtime_ns"} | {"path": f"cache/{k}.npz", "geometry": _parse_key(k)[1]}
                   for k, v in sorted(cache_state.items(), key=lambda kv: _sort_key(kv[0]))},
    ).to_json()
    return report, manifest


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def current_split(out: str | os.PathLike[str]) -> tuple[str, int] | None:
    """(split_mode, seed) a prepared folder was last written with, or None."""
    try:
        report = json.loads((Path(out) / "prepare_report.json").read_text(encoding="utf-8"))
        mode, seed = report["split_mode"], report["seed"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (mode, seed) if mode in SPLIT_MODES and isinstance(seed, int) else None


def current_ratios(out: str | os.PathLike[str]) -> tuple[float, float] | None:
    """(train, val) ratios a prepared folder's split was made with, or None."""
    try:
        report = json.loads((Path(out) / "prepare_report.json").read_text(encoding="utf-8"))
        ratios = report["split_ratios"]
        return float(ratios["train"]), float(ratios["val"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def open_prepared_source(prepared_dir: str | os.PathLike[str]) -> DatasetSource:
    """The archive a prepared folder came from, to read its original images: manifest
    ``image_path`` values are relative to the dataset root of this source
    (``source.read_bytes(row["image_path"])``)."""
    report_path = Path(prepared_dir) / "prepare_report.json"
    try:
        archive = json.loads(report_path.read_text(encoding="utf-8"))["archive"]
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"{report_path} is missing or unreadable", "run `fxbench prepare` first") from err
    return DatasetSource(archive)
