"""Read a FracAtlas-layout archive (zip or folder): dataset.csv, annotations, split, images.

Everything that can be malformed is parsed defensively: a bad row, polygon or file becomes a
recorded warning (``Warnings``) and is skipped; only a problem that leaves nothing to work with
(no dataset.csv, no ``image_id`` column, no polygon source at all) is a one-line ``DataError``.

Decisions (documented in docs/dataset.md):
- Images are decoded with the EXIF orientation applied (the annotations are in that frame),
  truncated JPEGs are accepted (and counted), and every mode is converted to 8-bit grey.
- A zero-byte, non-image or undecodable image file is skipped with a recorded warning; the
  rest of the dataset is still prepared.
- Polygons come from COCO and VGG; per image the source whose polygon count equals
  ``fracture_count`` is rasterized (COCO first when both agree).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import posixpath
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np

from fxbench.errors import DataError

#: dataset.csv metadata columns, in the manifest's order (``fractured`` is kept separately).
META_COLUMNS = (
    "hand", "leg", "hip", "shoulder", "mixed", "hardware", "multiscan",
    "fracture_count", "frontal", "lateral", "oblique",
)
CSV_COLUMNS = ("image_id", "hand", "leg", "hip", "shoulder", "mixed", "hardware", "multiscan",
               "fractured", "fracture_count", "frontal", "lateral", "oblique")
POLYGON_SOURCES = ("coco", "vgg")  # preference order when both agree with fracture_count
BOX_SOURCES = ("voc", "yolo")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
SPLIT_FILES = {"train": "train", "valid": "val", "val": "val", "test": "test"}
#: A vertex may overshoot the image by this many pixels (annotation tools round); beyond it
#: the polygon is in another frame and is dropped with a warning.
OOB_TOLERANCE_PX = 2.0
#: Cap on warnings kept in full (the counts per kind are always complete).
MAX_WARNINGS_KEPT = 2000

Polygon = tuple[float, ...]  # flat x0, y0, x1, y1, ... in pixels (transposed frame)


# --------------------------------------------------------------------------------------
# warnings


@dataclass
class Warnings:
    """Recorded, non-fatal problems: ``kind`` groups them, ``where`` says which file/image."""

    items: list[dict[str, str]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, where: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.items) < MAX_WARNINGS_KEPT:
            self.items.append({"kind": kind, "where": where, "message": message})

    def extend(self, items: list[dict[str, str]]) -> None:
        for item in items:
            self.add(item["kind"], item["where"], item["message"])

    def __len__(self) -> int:
        return sum(self.counts.values())


# --------------------------------------------------------------------------------------
# source: a zip or a folder, rooted at the folder holding dataset.csv


class DatasetSource:
    """Read-only access to the files below the dataset root of a zip or a folder.

    Paths are POSIX and relative to the root (the folder that holds ``dataset.csv``, usually
    ``FracAtlas/``). Picklable: worker processes reopen the zip lazily.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser()
        self._zip: zipfile.ZipFile | None = None
        if not self.path.exists():
            raise DataError(f"archive not found: {self.path}", "pass --archive with a FracAtlas zip or folder, or run `fxbench download`")
        self.is_zip = self.path.is_file()
        if self.is_zip:
            zf = self._open()
            names = [n for n in zf.namelist() if not n.endswith("/")]
            self.prefix = _find_root_in_names(names, str(self.path))
            self._files = sorted(n[len(self.prefix):] for n in names if n.startswith(self.prefix))
        else:
            root = _find_root_in_dir(self.path)
            self.prefix = root.relative_to(self.path).as_posix() + "/" if root != self.path else ""
            self._files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and not p.is_symlink())

    def _open(self) -> zipfile.ZipFile:
        if self._zip is None:
            from fxbench.data.archive import open_zip

            self._zip = open_zip(self.path)
        return self._zip

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_zip"] = None
        return state

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def files(self) -> list[str]:
        return list(self._files)

    def describe(self, rel: str) -> str:
        """Human-readable location of ``rel`` for messages."""
        return f"{self.path}:{self.prefix}{rel}" if self.is_zip else str(self.path / self.prefix / rel)

    def read_bytes(self, rel: str) -> bytes:
        try:
            if self.is_zip:
                return self._open().read(self.prefix + rel)
            return (self.path / self.prefix / rel).read_bytes()
        except (KeyError, FileNotFoundError) as err:
            raise DataError(f"missing file {self.describe(rel)}") from err
        except (zipfile.BadZipFile, OSError, EOFError) as err:
            raise DataError(f"cannot read {self.describe(rel)} ({err})", "the archive may be corrupt: download it again") from err

    def fingerprint(self) -> str:
        """Content identity of the dataset files, cheap to compute (no full read).

        zip: names, sizes and CRC32s from the central directory; folder: names, sizes, mtimes.
        """
        h = hashlib.sha256()
        if self.is_zip:
            zf = self._open()
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                if info.filename.startswith(self.prefix) and not info.is_dir():
                    h.update(f"{info.filename[len(self.prefix):]}\0{info.file_size}\0{info.CRC}\n".encode())
        else:
            base = self.path / self.prefix
            for rel in self._files:
                st = (base / rel).stat()
                h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _find_root_in_names(names: list[str], where: str) -> str:
    """Prefix (ending in '/' or empty) of the shallowest dataset.csv in a zip listing."""
    hits = [n for n in names if posixpath.basename(n).lower() == "dataset.csv"]
    if not hits:
        raise DataError(f"{where} has no dataset.csv; it is not a FracAtlas-layout archive", "pass the FracAtlas.zip from figshare, or a folder holding dataset.csv")
    best = min(hits, key=lambda n: (n.count("/"), n))
    return best[: len(best) - len("dataset.csv")]


def _find_root_in_dir(path: Path) -> Path:
    """The folder holding dataset.csv: ``path`` itself or up to three levels below it."""
    if (path / "dataset.csv").is_file():
        return path
    for depth in ("*", "*/*", "*/*/*"):
        hits = sorted(p.parent for p in path.glob(f"{depth}/dataset.csv") if p.is_file())
        if hits:
            return hits[0]
    raise DataError(f"{path} holds no dataset.csv (looked 3 levels deep); it is not a FracAtlas-layout folder", "pass the extracted FracAtlas folder or the zip")


# --------------------------------------------------------------------------------------
# dataset.csv


@dataclass
class CsvRow:
    """One dataset.csv row: ints for 0/1 and counts, None where missing or not a number."""

    image_id: str
    index: int  # 0-based row order (the seed split depends on it)
    fractured: int | None
    meta: dict[str, int | None]


def _parse_int(text: Any) -> int | None:
    if text is None:
        return None
    text = str(text).strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or value != int(value) or value < 0:
        return None
    return int(value)


def parse_dataset_csv(data: bytes, where: str, warnings: Warnings) -> list[CsvRow]:
    """Parse dataset.csv (BOM and CRLF tolerated). Missing metadata columns are warnings;
    a missing ``image_id`` column is a DataError. Duplicate ids keep the first row."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{where} is not UTF-8 text (byte {err.start})", "re-save dataset.csv as UTF-8") from err
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{where} is empty", "restore dataset.csv from the archive") from None
    except csv.Error as err:
        raise DataError(f"{where}: unreadable CSV header ({err})") from err
    cols = [c.strip().lower() for c in header]
    if "image_id" not in cols:
        raise DataError(f"{where} has no image_id column (found: {', '.join(cols) or 'nothing'})", "restore dataset.csv from the archive")
    missing = [c for c in CSV_COLUMNS if c not in cols]
    if missing:
        warnings.add("csv_missing_columns", where, f"missing columns {', '.join(missing)}; their values are left empty")
    extra = [c for c in cols if c and c not in CSV_COLUMNS]
    if extra:
        warnings.add("csv_extra_columns", where, f"ignored extra columns {', '.join(extra)}")
    pos = {c: i for i, c in reversed(list(enumerate(cols)))}  # first occurrence wins
    rows: list[CsvRow] = []
    seen: set[str] = set()
    try:
        for line_no, fields in enumerate(reader, start=2):
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(cols):
                warnings.add("csv_row_length", f"{where} line {line_no}", f"{len(fields)} fields, header has {len(cols)}")
            def get(col: str, fields: list[str] = fields) -> str | None:
                return fields[pos[col]] if col in pos and pos[col] < len(fields) else None

            image_id = (get("image_id") or "").strip()
            if not image_id or "/" in image_id or "\\" in image_id or image_id in (".", ".."):
                warnings.add("csv_bad_image_id", f"{where} line {line_no}", f"unusable image_id {image_id!r}; row skipped")
                continue
            if image_id in seen:
                warnings.add("csv_duplicate_id", f"{where} line {line_no}", f"duplicate image_id {image_id}; the first row is kept")
                continue
            seen.add(image_id)
            fractured = _parse_int(get("fractured"))
            if "fractured" in pos and (fractured is None or fractured > 1):
                warnings.add("csv_bad_value", f"{where} line {line_no}", f"fractured={get('fractured')!r} is not 0/1; treated as missing")
                fractured = None
            meta = {}
            for col in META_COLUMNS:
                value = _parse_int(get(col))
                if col in pos and value is None:
                    warnings.add("csv_bad_value", f"{where} line {line_no}", f"{col}={get(col)!r} is not a count; treated as missing")
                meta[col] = value
            rows.append(CsvRow(image_id, len(rows), fractured, meta))
    except csv.Error as err:
        raise DataError(f"{where}: malformed CSV ({err})", "restore dataset.csv from the archive") from err
    if not rows:
        raise DataError(f"{where} has no data rows", "restore dataset.csv from the archive")
    return rows


# --------------------------------------------------------------------------------------
# annotations


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def validate_polygon(xs: Any, ys: Any) -> tuple[Polygon | None, str | None]:
    """A clean flat polygon from coordinate lists, or (None, why it was rejected)."""
    if not isinstance(xs, list) or not isinstance(ys, list):
        return None, "coordinates are not lists"
    if len(xs) != len(ys):
        return None, f"x and y lists differ in length ({len(xs)} vs {len(ys)})"
    if not all(_is_number(v) for v in xs) or not all(_is_number(v) for v in ys):
        return None, "coordinates are not finite numbers"
    pts = list(zip((float(x) for x in xs), (float(y) for y in ys), strict=True))
    if len(set(pts)) < 3:
        return None, f"fewer than 3 distinct points ({len(set(pts))})"
    return tuple(c for p in pts for c in p), None


def _load_json(data: bytes, where: str, warnings: Warnings, kind: str) -> Any:
    """Parsed JSON, or None (with a warning) when it is not JSON or is a bare ``null``."""
    try:
        doc = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        warnings.add(kind, where, f"not valid JSON ({type(err).__name__}); source ignored")
        return None
    if doc is None:
        warnings.add(kind, where, "the file holds JSON null; source ignored")
    return doc


def parse_coco(data: bytes, where: str, warnings: Warnings) -> tuple[dict[str, list[list[Polygon]]], dict[str, tuple[int, int]]] | None:
    """COCO polygons per image file name: one entry per annotation (a fracture), each a list of
    rings. Also the declared (width, height). None when the file is unusable."""
    doc = _load_json(data, where, warnings, "coco_invalid")
    if doc is None:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        warnings.add("coco_invalid", where, "needs a top-level object with 'images' and 'annotations' lists; source ignored")
        return None
    names: dict[Any, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for i, im in enumerate(doc["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str) or not isinstance(im.get("id"), (int, str)) or isinstance(im.get("id"), bool):
            warnings.add("coco_bad_image", f"{where} images[{i}]", "needs 'id' and 'file_name'; skipped")
            continue
        name = posixpath.basename(im["file_name"].replace("\\", "/"))
        names[im["id"]] = name
        w, h = im.get("width"), im.get("height")
        if w is not None and h is not None and _is_number(w) and _is_number(h):
            sizes[name] = (int(w), int(h))
    out: dict[str, list[list[Polygon]]] = {}
    for i, ann in enumerate(doc["annotations"]):
        loc = f"{where} annotations[{i}]"
        if not isinstance(ann, dict):
            warnings.add("coco_bad_annotation", loc, "not an object; skipped")
            continue
        image_id = ann.get("image_id")
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)) or image_id not in names:
            warnings.add("coco_bad_annotation", loc, f"image_id {image_id!r} is not in 'images'; skipped")
            continue
        seg = ann.get("segmentation")
        if not isinstance(seg, list):
            kind = "RLE masks are not supported" if isinstance(seg, dict) else "no polygon 'segmentation' list"
            warnings.add("coco_bad_annotation", f"{loc} ({names[image_id]})", f"{kind}; skipped")
            continue
        rings = []
        for ring in seg:
            if not isinstance(ring, list) or len(ring) % 2:
                warnings.add("coco_bad_polygon", f"{loc} ({names[image_id]})", "ring is not an even-length list of numbers; skipped")
                continue
            poly, why = validate_polygon(ring[0::2], ring[1::2])
            if poly is None:
                warnings.add("coco_bad_polygon", f"{loc} ({names[image_id]})", f"{why}; skipped")
                continue
            rings.append(poly)
        if rings:
            out.setdefault(names[image_id], []).append(rings)
        elif seg:
            warnings.add("coco_bad_annotation", f"{loc} ({names[image_id]})", "no valid ring; annotation skipped")
    return out, sizes


def parse_vgg(data: bytes, where: str, warnings: Warnings) -> dict[str, list[list[Polygon]]] | None:
    """VGG (VIA) polygons per image file name, one single-ring entry per polygon region."""
    doc = _load_json(data, where, warnings, "vgg_invalid")
    if doc is None:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("_via_img_metadata"), dict):
        doc = doc["_via_img_metadata"]  # VIA project file
    if not isinstance(doc, dict):
        warnings.add("vgg_invalid", where, "needs a top-level object keyed by file name; source ignored")
        return None
    out: dict[str, list[list[Polygon]]] = {}
    for key, entry in doc.items():
        loc = f"{where} [{key}]"
        if not isinstance(entry, dict):
            warnings.add("vgg_bad_entry", loc, "entry is not an object; skipped")
            continue
        name = entry.get("filename", key)
        if not isinstance(name, str) or not name:
            warnings.add("vgg_bad_entry", loc, "no usable 'filename'; skipped")
            continue
        name = posixpath.basename(name.replace("\\", "/"))
        regions = entry.get("regions", [])
        if isinstance(regions, dict):
            regions = list(regions.values())
        if not isinstance(regions, list):
            warnings.add("vgg_bad_entry", loc, "'regions' is neither a list nor an object; skipped")
            continue
        polys = out.setdefault(name, [])
        for j, region in enumerate(regions):
            shape = region.get("shape_attributes") if isinstance(region, dict) else None
            if not isinstance(shape, dict):
                warnings.add("vgg_bad_region", f"{loc} region {j}", "no 'shape_attributes'; skipped")
                continue
            if shape.get("name") != "polygon":
                warnings.add("vgg_bad_region", f"{loc} region {j}", f"shape {shape.get('name')!r} is not a polygon; skipped")
                continue
            poly, why = validate_polygon(shape.get("all_points_x"), shape.get("all_points_y"))
            if poly is None:
                warnings.add("vgg_bad_polygon", f"{loc} region {j}", f"{why}; skipped")
                continue
            polys.append([poly])
    return out


def parse_voc(data: bytes, where: str, warnings: Warnings) -> int | None:
    """Number of <object> boxes in a PASCAL VOC file, None when unreadable."""
    boxes = parse_voc_boxes(data, where, warnings)
    return None if boxes is None else len(boxes)


def parse_voc_boxes(data: bytes, where: str, warnings: Warnings) -> list[tuple[float, float, float, float] | None] | None:
    """Boxes ``(xmin, ymin, xmax, ymax)`` in pixels of a PASCAL VOC file (one entry per
    <object>, None for an object without a readable <bndbox>); None when the file is unreadable.
    """
    try:
        # Expat refuses external entities and (>= 2.4) entity-expansion bombs.
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as err:
        warnings.add("voc_invalid", where, f"not valid XML ({err}); ignored")
        return None
    boxes: list[tuple[float, float, float, float] | None] = []
    for obj in root.findall("object"):
        try:
            bb = obj.find("bndbox")
            values = tuple(float((bb.findtext(k) if bb is not None else None) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            values = (math.nan,) * 4
        boxes.append(values if all(math.isfinite(v) for v in values) else None)  # type: ignore[arg-type]
    return boxes


def parse_yolo(data: bytes, where: str, warnings: Warnings) -> int | None:
    """Number of boxes in a YOLO label file (``class cx cy w h`` lines), None when unreadable."""
    boxes = parse_yolo_boxes(data, where, warnings)
    return None if boxes is None else len(boxes)


def parse_yolo_boxes(data: bytes, where: str, warnings: Warnings) -> list[tuple[float, float, float, float]] | None:
    """Boxes ``(cx, cy, w, h)``, normalised by the image size, of a YOLO label file; bad lines
    are skipped with a warning; None when the file is not UTF-8 text."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        warnings.add("yolo_invalid", where, "not UTF-8 text; ignored")
        return None
    boxes: list[tuple[float, float, float, float]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            values = [float(p) for p in parts]
        except ValueError:
            warnings.add("yolo_bad_line", f"{where} line {n}", "non-numeric field; line skipped")
            continue
        if len(values) < 5 or not all(math.isfinite(v) for v in values):
            warnings.add("yolo_bad_line", f"{where} line {n}", "needs class cx cy w h; line skipped")
            continue
        boxes.append((values[1], values[2], values[3], values[4]))
    return boxes


# --------------------------------------------------------------------------------------
# the layout


@dataclass
class Layout:
    """Everything read from the archive except the pixels."""

    source: DatasetSource
    rows: list[CsvRow]
    images: dict[str, str]  # image_id -> relative path
    folders: dict[str, str]  # image_id -> 'Fractured' / 'Non_fractured' / other folder name
    polygons: dict[str, dict[str, list[list[Polygon]]]]  # source -> image_id -> fractures
    boxes: dict[str, dict[str, int]]  # source -> image_id -> box count
    declared_sizes: dict[str, tuple[int, int]]  # COCO (width, height) per image_id
    official_split: dict[str, str] | None  # image_id -> train/val/test (positives only)
    files_found: dict[str, str]  # which annotation file each source came from
    warnings: Warnings
    # source -> file stem -> boxes as written: yolo (cx, cy, w, h) normalised, voc (xmin, ymin,
    # xmax, ymax) pixels (None: an object without a readable box)
    box_coords: dict[str, dict[str, list[Any]]] = field(default_factory=dict)


def _first(files: list[str], predicate: Any) -> str | None:
    hits = [f for f in files if predicate(f.lower())]
    return hits[0] if hits else None


def _index_images(src: DatasetSource, rows: list[CsvRow], warnings: Warnings) -> tuple[dict[str, str], dict[str, str]]:
    """Map image_id -> path under images/ (by file name, any sub-folder)."""
    by_name: dict[str, list[str]] = {}
    for rel in src.files():
        if rel.lower().startswith("images/"):
            by_name.setdefault(posixpath.basename(rel), []).append(rel)
    wanted = {r.image_id: r for r in rows}
    images: dict[str, str] = {}
    folders: dict[str, str] = {}
    for image_id, row in wanted.items():
        paths = by_name.get(image_id) or []
        if not paths:
            warnings.add("image_missing", image_id, "listed in dataset.csv but no file under images/; skipped")
            continue
        if len(paths) > 1:
            prefer = "fractured/" if row.fractured == 1 else "non_fractured/"
            paths = sorted(paths, key=lambda p: (prefer not in p.lower(), p))
            warnings.add("image_ambiguous", image_id, f"{len(paths)} files with this name; using {paths[0]}")
        images[image_id] = paths[0]
        parts = paths[0].split("/")
        folders[image_id] = parts[1] if len(parts) > 2 else ""
    extra = sorted(n for n in by_name if n not in wanted and n.lower().endswith(IMAGE_EXTENSIONS))
    if extra:
        warnings.add("image_not_in_csv", ", ".join(extra[:10]), f"{len(extra)} image file(s) not listed in dataset.csv; ignored")
    return images, folders


def _read_official_split(src: DatasetSource, files: list[str], warnings: Warnings) -> dict[str, str] | None:
    split: dict[str, str] = {}
    for rel in files:
        low = rel.lower()
        if not (low.startswith("utilities/") and "split" in low and low.endswith(".csv")):
            continue
        name = posixpath.splitext(posixpath.basename(low))[0]
        if name not in SPLIT_FILES:
            continue
        try:
            text = src.read_bytes(rel).decode("utf-8-sig")
        except (UnicodeDecodeError, DataError):
            warnings.add("split_invalid", src.describe(rel), "unreadable; official split ignored")
            return None
        lines = [ln.strip().split(",")[0].strip() for ln in text.splitlines() if ln.strip()]
        for image_id in lines[1:] if lines and lines[0].lower() == "image_id" else lines:
            if image_id in split and split[image_id] != SPLIT_FILES[name]:
                warnings.add("split_conflict", image_id, f"listed in official {split[image_id]} and {SPLIT_FILES[name]}; keeping {split[image_id]}")
                continue
            split.setdefault(image_id, SPLIT_FILES[name])
    return split or None


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """Read dataset.csv, every annotation source and the official split from a zip or folder."""
    src = DatasetSource(path)
    warnings = Warnings()
    files = src.files()
    csv_rel = "dataset.csv" if "dataset.csv" in files else _first(files, lambda f: f == "dataset.csv")
    assert csv_rel is not None  # the root is defined by it
    rows = parse_dataset_csv(src.read_bytes(csv_rel), src.describe(csv_rel), warnings)
    images, folders = _index_images(src, rows, warnings)
    found: dict[str, str] = {}
    polygons: dict[str, dict[str, list[list[Polygon]]]] = {}
    declared: dict[str, tuple[int, int]] = {}
    coco_rel = _first(files, lambda f: f.startswith("annotations/") and "coco" in posixpath.dirname(f) and f.endswith(".json"))
    if coco_rel:
        parsed = parse_coco(src.read_bytes(coco_rel), src.describe(coco_rel), warnings)
        if parsed is not None:
            polygons["coco"], declared = parsed
            found["coco"] = coco_rel
    vgg_rel = _first(files, lambda f: f.startswith("annotations/") and "vgg" in posixpath.dirname(f) and f.endswith(".json"))
    if vgg_rel:
        parsed_vgg = parse_vgg(src.read_bytes(vgg_rel), src.describe(vgg_rel), warnings)
        if parsed_vgg is not None:
            polygons["vgg"] = parsed_vgg
            found["vgg"] = vgg_rel
    if not polygons:
        raise DataError(
            f"{src.path}: no usable polygon annotations (looked for Annotations/COCO JSON/*.json and Annotations/VGG JSON/*.json)",
            "use the complete FracAtlas archive",
        )
    coords: dict[str, dict[str, list[Any]]] = {}
    boxes = _read_boxes(src, files, warnings, found, coords)
    official = _read_official_split(src, files, warnings)
    return Layout(src, rows, images, folders, polygons, boxes, declared, official, found, warnings, coords)


def _read_boxes(src: DatasetSource, files: list[str], warnings: Warnings, found: dict[str, str],
                coords: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, int]]:
    boxes: dict[str, dict[str, int]] = {}
    for rel in files:
        low = rel.lower()
        if not low.startswith("annotations/"):
            continue
        stem = posixpath.splitext(posixpath.basename(rel))[0]
        if low.endswith(".xml") and ("voc" in low or "pascal" in low):
            parsed: list[Any] | None = parse_voc_boxes(src.read_bytes(rel), src.describe(rel), warnings)
            kind = "voc"
        elif low.endswith(".txt") and "yolo" in low and posixpath.basename(low) not in ("labels.txt", "classes.txt"):
            parsed = parse_yolo_boxes(src.read_bytes(rel), src.describe(rel), warnings)
            kind = "yolo"
        else:
            continue
        if parsed is not None:
            boxes.setdefault(kind, {})[stem] = len(parsed)
            coords.setdefault(kind, {})[stem] = parsed
            found.setdefault(kind, posixpath.dirname(rel) + "/")
    return boxes


def polygon_count(layout: Layout, source: str, image_id: str) -> int | None:
    """Number of fractures (annotations) ``source`` has for ``image_id``; None if no source."""
    if source not in layout.polygons:
        return None
    return len(layout.polygons[source].get(image_id, []))


def box_count(layout: Layout, source: str, image_id: str) -> int | None:
    if source not in layout.boxes:
        return None
    return layout.boxes[source].get(posixpath.splitext(image_id)[0])


def choose_polygon_source(counts: dict[str, int | None], fracture_count: int | None, box_counts: dict[str, int | None]) -> str | None:
    """Which polygon source to rasterize for one image.

    The reference count is ``fracture_count``; without it, the box count when VOC and YOLO
    agree. The first source (COCO, then VGG) whose count equals the reference wins; when
    none does, the closest (ties: preference order); without any reference, the largest.
    """
    present = [s for s in POLYGON_SOURCES if counts.get(s) is not None]
    if not present:
        return None
    ref = fracture_count
    if ref is None:
        known = {v for v in box_counts.values() if v is not None}
        ref = known.pop() if len(known) == 1 else None
    if ref is None:
        return max(present, key=lambda s: (counts[s], -POLYGON_SOURCES.index(s)))
    for s in present:
        if counts[s] == ref:
            return s
    return min(present, key=lambda s: (abs(int(counts[s] or 0) - ref), POLYGON_SOURCES.index(s)))


# --------------------------------------------------------------------------------------
# rasterization (run in worker processes; decoding is fxbench.data.decode)


def check_polygon_bounds(poly: Polygon, height: int, width: int) -> str | None:
    """Why ``poly`` does not fit an image of ``height`` x ``width`` pixels, or None."""
    xs, ys = poly[0::2], poly[1::2]
    tol = OOB_TOLERANCE_PX
    if min(xs) < -tol or min(ys) < -tol or max(xs) > width + tol or max(ys) > height + tol:
        return (f"vertex outside the {width}x{height} image (x {min(xs):.1f}..{max(xs):.1f}, "
                f"y {min(ys):.1f}..{max(ys):.1f})")
    return None


def rasterize(polygons: list[Polygon], height: int, width: int) -> np.ndarray:
    """Union of filled polygons -> bool mask [H, W].

    Like the seed: vertices rounded to the nearest pixel, polygon filled and its outline drawn
    (PIL), so a thin polygon never vanishes. A square with corners (2,2)..(6,6) covers 5x5 = 25 px.
    """
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = [(int(round(poly[i])), int(round(poly[i + 1]))) for i in range(0, len(poly), 2)]
        draw.polygon(pts, fill=255, outline=255)
    return np.asarray(canvas) > 0


def pixel_hash(pixels: np.ndarray) -> str:
    """Identity of the decoded pixels (shape included): equal hashes = pixel-identical images."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{pixels.shape[0]}x{pixels.shape[1]}|".encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()
