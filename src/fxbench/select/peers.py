"""Peers: score other tools' masks with fxbench's code, and export a dataset nnU-Net can train on.

:func:`score_mask_folder` reads one PNG mask per image of a split (from nnU-Net, YOLO-seg or
anything else), at the image's native size or at the cache size, brings it into the
letterboxed cache frame with the rule ``prepare`` used for the ground truth
(:func:`fxbench.data.cache.letterbox`), and scores it with
:func:`fxbench.evaluate.evaluate_predictions` -- the same definitions, resolution and
bootstrap as fxbench's own runs, which the seed's nnU-Net comparison lacked.

Presence scores for a peer: ``csv`` when a CSV (``image_id,score``) is given, else ``area``,
the predicted area fraction inside the image (the seed's nnU-Net rule, with ties at 0).

:func:`export_nnunet` writes an nnU-Net v2 raw dataset whose single fold is fxbench's
train/val split, so nnU-Net trains on exactly our training images and never sees test labels
unless asked.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fxbench.errors import DataError, UsageError
from fxbench.io import (
    read_json,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)

if TYPE_CHECKING:
    from fxbench.artifacts.predictions import Predictions

SPLITS = ("train", "val", "test")


# --------------------------------------------------------------------------------------
# prepared folder access (torch-free)


def read_manifest(prepared_dir: str | Path) -> list[dict[str, str]]:
    """Rows of ``PREP/manifest.csv`` (DataError when missing)."""
    path = Path(prepared_dir) / "manifest.csv"
    if not path.is_file():
        raise DataError(f"{prepared_dir} is not a prepared folder (no manifest.csv)", "run `fxbench prepare` first")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and ("image_id" not in rows[0] or "split" not in rows[0]):
        raise DataError(f"{path} lacks the image_id/split columns", "re-run `fxbench prepare --force`")
    return rows


def _stem(image_id: str) -> str:
    return Path(image_id).stem


def _pick_cache(prepared_dir: Path, cache_size: int | None, resize: str | None = None) -> Path:
    """The cache to score in; ``resize`` None = letterbox, or stretch when the folder has only
    stretch caches (the geometry used is recorded in the artifact's meta)."""
    from fxbench.data.cache import available_caches

    if resize is None:
        resize = "letterbox" if available_caches(prepared_dir, "letterbox") or not available_caches(
            prepared_dir, "stretch") else "stretch"
    caches = available_caches(prepared_dir, resize)
    if not caches:
        raise DataError(f"no {resize} cache in {prepared_dir / 'cache'}", f"run `fxbench prepare --resize {resize} --cache-size S`")
    if cache_size is None:
        return next(iter(caches.values()))  # the smallest: the usual scoring resolution
    if cache_size not in caches:
        raise DataError(
            f"no {cache_size} px cache in {prepared_dir / 'cache'} (have: {', '.join(map(str, caches))})",
            f"run `fxbench prepare --cache-size {cache_size}` or pass one of those",
        )
    return caches[cache_size]


def _split_sha256(prepared_dir: Path) -> str | None:
    report = prepared_dir / "prepare_report.json"
    if report.is_file():
        value = read_json(report).get("split_sha256")
        return str(value) if value else None
    return None


def _read_mask_png(path: Path) -> np.ndarray:
    """bool [H,W] by the one mask reader (:func:`fxbench.data.masks.read_mask`)."""
    from fxbench.data.masks import read_mask

    return read_mask(path).astype(bool)


def read_presence_csv(path: str | Path) -> dict[str, float]:
    """``image_id,score`` (also ``presence`` or ``probability`` as the score column) -> dict."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"presence CSV not found: {path}")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        cols = reader.fieldnames or []
        score_col = next((c for c in ("score", "presence", "probability", "prob") if c in cols), None)
        if "image_id" not in cols or score_col is None:
            raise DataError(f"{path}: needs columns image_id and score", "write it as image_id,score")
        out: dict[str, float] = {}
        for n, row in enumerate(reader, start=2):
            try:
                out[_stem(row["image_id"])] = float(row[score_col])
            except (TypeError, ValueError) as err:
                raise DataError(f"{path}:{n}: score '{row[score_col]}' is not a number") from err
    return out


# --------------------------------------------------------------------------------------
# scoring a folder of masks


def masks_to_predictions(
    pred_dir: str | Path,
    prepared_dir: str | Path,
    split: str,
    presence_csv: str | Path | None = None,
    *,
    cache_size: int | None = None,
    allow_missing: bool = False,
    resize: str | None = None,
) -> Predictions:
    """Build a predictions artifact (probabilities 0/1 at cache resolution) from mask PNGs.

    A mask ``pred_dir/<stem>.png`` may be native size (H, W after EXIF transpose) or the
    cache's S x S square (``resize``: letterbox or stretch, the cache's geometry; default
    letterbox, or stretch when the folder has only stretch caches); any
    non-zero pixel is fracture.

    Raises:
        DataError: missing masks (unless ``allow_missing``: then empty and listed in meta),
            a mask of another size, or presence scores missing for some images.
    """
    from fxbench.artifacts.predictions import Predictions
    from fxbench.data.cache import load_cache, to_cache_frame

    if split not in SPLITS:
        raise UsageError(f"unknown split '{split}'", "use train, val or test")
    pred_dir, prep = Path(pred_dir), Path(prepared_dir)
    if not pred_dir.is_dir():
        raise DataError(f"prediction folder not found: {pred_dir}")
    ids = sorted(r["image_id"] for r in read_manifest(prep) if r["split"] == split)
    if not ids:
        raise DataError(f"split '{split}' of {prep} has no images")
    cache_path = _pick_cache(prep, cache_size, resize)
    cache = load_cache(cache_path)
    pos = {i: k for k, i in enumerate(cache.image_ids)}
    missing_cache = [i for i in ids if i not in pos]
    if missing_cache:
        raise DataError(f"{len(missing_cache)} {split} images are not in {cache_path} (first: {missing_cache[0]})")
    idx = np.array([pos[i] for i in ids])
    size = cache.size
    probs = np.zeros((len(ids), size, size), dtype=np.float16)
    area = np.zeros(len(ids), dtype=np.float32)
    missing: list[str] = []
    for n, (image_id, k) in enumerate(zip(ids, idx, strict=True)):
        path = pred_dir / f"{_stem(image_id)}.png"
        if not path.is_file():
            missing.append(image_id)
            continue
        mask = _read_mask_png(path)
        h, w = (int(v) for v in cache.native_hw[k])
        top, left, bh, bw = (int(v) for v in cache.boxes[k])
        if mask.shape == (h, w):
            # The ground-truth rule: >= 50% coverage, a non-empty mask keeps at least one pixel.
            _, small, _ = to_cache_frame(np.zeros((h, w), np.uint8), mask, size, cache.geometry)
            area[n] = float(mask.mean())
        elif mask.shape == (size, size):
            small = mask.astype(np.uint8)
            area[n] = float(small[top : top + bh, left : left + bw].mean())
        else:
            raise DataError(
                f"{path} is {mask.shape[1]}x{mask.shape[0]}; expected native {w}x{h} or cache {size}x{size}",
                "write masks at the image's native size (after EXIF rotation) or at the cache size",
            )
        probs[n] = small
    if missing and not allow_missing:
        raise DataError(
            f"{len(missing)} of {len(ids)} {split} masks are missing in {pred_dir} (first: {_stem(missing[0])}.png)",
            "predict every image, or pass allow_missing to score them as empty",
        )
    presence: dict[str, np.ndarray] = {"area": area}
    if presence_csv is not None:
        scores = read_presence_csv(presence_csv)
        lacking = [i for i in ids if _stem(i) not in scores]
        if lacking:
            raise DataError(f"{presence_csv} has no score for {len(lacking)} images (first: {lacking[0]})")
        presence["csv"] = np.array([scores[_stem(i)] for i in ids], dtype=np.float32)
    masks = cache.masks[idx]
    return Predictions(
        image_ids=ids, probs=probs, masks=masks, boxes=cache.boxes[idx], native_hw=cache.native_hw[idx],
        presence=presence, labels=masks.reshape(len(ids), -1).any(axis=1), meta={
            "split": split, "tta": "none", "run": pred_dir.name, "kind": "peer", "source_dir": str(pred_dir.resolve()),
            "cache_sha256": cache.sha256, "split_sha256": _split_sha256(prep), "prepared": str(prep.resolve()),
            "resize": cache.geometry,
            "missing_predictions": [_stem(m) for m in missing],
        },
    )


def peer_decision(pred: Predictions, presence_threshold: float | None = None) -> Any:
    """The fixed operating point of binary peer masks (nothing is tuned: source user-fixed).

    Pixel threshold 0.5 on 0/1 maps; presence ``csv`` at 0.5 (or the given value) when given,
    else ``area`` > 0 (the seed's rule), written as ``area >= 1e-12``.
    """
    from fxbench.artifacts.decision import Decision

    source = "csv" if "csv" in pred.presence else "area"
    default = 0.5 if source == "csv" else 1e-12
    return Decision(
        threshold=0.5, presence_source=source,
        presence_threshold=default if presence_threshold is None else float(presence_threshold),
        min_component=0, tta="none", selected_on="user", source="user-fixed", kind="peer",
    )


def score_mask_folder(
    pred_dir: str | Path,
    prepared_dir: str | Path,
    split: str,
    presence_csv: str | Path | None = None,
    *,
    cache_size: int | None = None,
    presence_threshold: float | None = None,
    bootstrap: int = 2000,
    seed: int = 0,
    resolution: str = "cache",
    allow_missing: bool = False,
    out_dir: str | Path | None = None,
    command: str = "fxbench eval --predictions",
) -> dict[str, Any]:
    """Score a folder of mask PNGs on ``split`` exactly like an fxbench run; returns the metrics.

    ``resolution="native"`` upsamples the letterboxed masks back to native size and compares
    them with ``PREP/masks`` through the evaluate code (what ``eval --resolution native`` does
    for runs). With ``out_dir`` the artifact, metrics and decision are written as a run folder.

    The test split is sealed like a run's: it needs ``out_dir`` (the peer folder, see
    :func:`default_peer_folder`) and goes through :func:`fxbench.select.seal.score_under_seal`
    with ``kind="peer"``, so every test scoring of that folder is logged and counted. The
    operating point is fixed by the masks themselves (``user-fixed``); scoring masks written at
    several thresholds is a test-set sweep, and the access counts show it.

    Raises:
        ProtocolError: a test scoring without ``out_dir``.
    """
    from fxbench.artifacts.predictions import predictions_sha256, save_predictions
    from fxbench.evaluate import evaluate_predictions

    prep = Path(prepared_dir)
    if split == "test" and out_dir is None:
        from fxbench.errors import ProtocolError

        raise ProtocolError("scoring peer predictions on test needs an output folder where the access is logged",
                            f"pass --out DIR (the CLI defaults to {default_peer_folder(pred_dir)})")
    pred = masks_to_predictions(pred_dir, prep, split, presence_csv, cache_size=cache_size, allow_missing=allow_missing)
    decision = peer_decision(pred, presence_threshold)
    loader = _native_loader(prep) if resolution == "native" else None

    def score(p: Predictions, d: Any) -> dict[str, Any]:
        metrics = evaluate_predictions(
            p, d.to_dict(), bootstrap=bootstrap, seed=seed, subgroups=None,
            resolution=resolution, native_masks_loader=loader,  # type: ignore[arg-type]
        )
        metrics.update(run=p.meta["run"], kind="peer", decision_source=d.source,
                       missing_predictions=p.meta["missing_predictions"])
        return metrics

    if out_dir is None:
        return score(pred, decision)
    from fxbench.artifacts.decision import write_decision

    out = Path(out_dir)
    write_decision(out / "decision.json", decision)
    if split == "test":
        from fxbench.select.seal import score_under_seal

        return score_under_seal(out, pred, kind="peer", command=command, decision=decision, scorer=score,
                                save_to=out / "predictions" / "test.npz",
                                extra={"source_dir": str(Path(pred_dir).resolve())})
    metrics = score(pred, decision)
    art = save_predictions(out / "predictions" / f"{split}.npz", pred)
    metrics["predictions_sha256"] = predictions_sha256(art)
    write_json_atomic(out / "metrics" / f"{split}.json", metrics)
    return metrics


def default_peer_folder(pred_dir: str | Path) -> Path:
    """Where a peer's scoring is recorded by default: ``<pred_dir>.fxbench-peer`` beside it."""
    pred_dir = Path(pred_dir)
    return pred_dir.parent / f"{pred_dir.name}.fxbench-peer"


def _native_loader(prep: Path) -> Callable[[str], np.ndarray]:
    def load(image_id: str) -> np.ndarray:
        path = prep / "masks" / f"{_stem(image_id)}.png"
        if not path.is_file():
            raise DataError(f"native mask not found: {path}", "re-run `fxbench prepare`")
        return _read_mask_png(path).astype(np.uint8)

    return load


# --------------------------------------------------------------------------------------
# nnU-Net v2 export


def _bytes_reader(prep: Path, archive: str | Path | None) -> Callable[[dict[str, str]], bytes]:
    """image row -> the original image file's bytes.

    ``image_path`` is tried as a file (absolute, or relative to PREP), then inside the archive
    (``archive`` or the one named in prepare_report.json).
    """
    from fxbench.data.fracatlas import DatasetSource

    source: list[Any] = []

    def archive_source() -> Any:
        if not source:
            path = archive
            if path is None and (prep / "prepare_report.json").is_file():
                report = read_json(prep / "prepare_report.json")
                path = report.get("archive") or report.get("archive_path") or report.get("source")
            if path is None:
                raise DataError(
                    f"cannot find the images of {prep}: image_path is not a file and no archive is recorded",
                    "pass --archive with the FracAtlas zip or folder prepare used",
                )
            source.append(DatasetSource(path))
        return source[0]

    def read(row: dict[str, str]) -> bytes:
        rel = row.get("image_path") or ""
        candidates = [Path(rel), prep / rel] if rel else []
        data = next((c.read_bytes() for c in candidates if rel and c.is_file()), None)
        return data if data is not None else archive_source().read_bytes(rel or row["image_id"])

    return read


def _image_reader(prep: Path, archive: str | Path | None) -> Callable[[dict[str, str]], np.ndarray]:
    """image row -> grey uint8 [H,W] in the EXIF-transposed frame, decoded as ``prepare`` does
    (the file is found as :func:`_bytes_reader` finds it)."""
    from fxbench.data.decode import ImageDecodeError, decode_image

    read_bytes = _bytes_reader(prep, archive)

    def read(row: dict[str, str]) -> np.ndarray:
        try:
            return decode_image(read_bytes(row), row.get("image_path") or row["image_id"]).pixels
        except ImageDecodeError as err:
            raise DataError(str(err)) from err

    return read


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    # compress_level 1: the export is dominated by PNG encoding of large radiographs.
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def export_rows(prep: Path, what: str) -> tuple[list[dict[str, str]], list[str]]:
    """Manifest rows sorted by image_id and their file stems, for an export (``what`` names the
    stems in the error: they become file names and must be unique)."""
    rows = sorted(read_manifest(prep), key=lambda r: r["image_id"])
    if not rows:
        raise DataError(f"{prep}/manifest.csv has no images")
    bad = sorted({r["split"] for r in rows} - set(SPLITS))
    if bad:
        raise DataError(f"{prep}/manifest.csv has unknown splits {bad}")
    stems = [_stem(r["image_id"]) for r in rows]
    if len(set(stems)) != len(stems):
        raise DataError(f"two images share a file stem; {what} must be unique")
    return rows, stems


def export_nnunet(
    prepared_dir: str | Path,
    out: str | Path,
    *,
    dataset_id: int = 501,
    name: str = "FracAtlas",
    test_labels: bool = False,
    archive: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write ``OUT/Dataset<id>_<name>`` in the nnU-Net v2 raw layout; returns that folder.

    * ``imagesTr/<case>_0000.png`` + ``labelsTr/<case>.png`` for train and val images (grey,
      native size; labels 0/1), ``imagesTs/<case>_0000.png`` for test (``labelsTs`` only with
      ``test_labels``: the test split stays sealed by default). ``case`` = image stem.
    * ``dataset.json``: channel 0 ``xray``, labels background 0 / fracture 1, ``.png``,
      ``numTraining`` = train + val, the NaturalImage2DIO reader.
    * ``splits_final.json``: one fold, ``train`` = our train split, ``val`` = our val split
      (copy it to ``nnUNet_preprocessed/Dataset<id>_<name>/`` and train fold 0).
    * ``case_mapping.csv``: case, image_id, split, label.
    """
    prep = Path(prepared_dir)
    if not 500 <= dataset_id <= 999:
        raise UsageError(f"--dataset-id must be 500..999 (got {dataset_id})", "nnU-Net reserves lower ids")
    clean = "".join(ch for ch in name if ch.isalnum()) or "FracAtlas"
    root = Path(out) / f"Dataset{dataset_id:03d}_{clean}"
    rows, cases = export_rows(prep, "nnU-Net case ids")
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise UsageError(f"{root} already exists", "pass --force to replace it")
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            shutil.rmtree(root / sub, ignore_errors=True)  # no stale cases from an older export
    read_image = _image_reader(prep, archive)
    for n, (row, case) in enumerate(zip(rows, cases, strict=True), start=1):
        test = row["split"] == "test"
        image = read_image(row)
        mask_path = prep / "masks" / f"{case}.png"
        if not mask_path.is_file():
            raise DataError(f"mask not found: {mask_path}", "re-run `fxbench prepare`")
        label = _read_mask_png(mask_path).astype(np.uint8)
        if label.shape != image.shape:
            raise DataError(f"{case}: mask {label.shape} and image {image.shape} differ in size", "re-run `fxbench prepare --force`")
        write_bytes_atomic(root / ("imagesTs" if test else "imagesTr") / f"{case}_0000.png", _png_bytes(image))
        if not test:
            write_bytes_atomic(root / "labelsTr" / f"{case}.png", _png_bytes(label))
        elif test_labels:
            write_bytes_atomic(root / "labelsTs" / f"{case}.png", _png_bytes(label))
        if progress is not None:
            progress(n, len(rows))
    train = [c for r, c in zip(rows, cases, strict=True) if r["split"] == "train"]
    val = [c for r, c in zip(rows, cases, strict=True) if r["split"] == "val"]
    dataset = {
        "channel_names": {"0": "xray"},
        "labels": {"background": 0, "fracture": 1},
        "numTraining": len(train) + len(val),
        "file_ending": ".png",
        "overwrite_image_reader_writer": "NaturalImage2DIO",
        "name": clean,
        "description": "FracAtlas fracture segmentation exported by fxbench; fold 0 = fxbench train/val split",
        "fxbench": {"prepared": str(prep.resolve()), "split_sha256": _split_sha256(prep), "test_labels": test_labels},
    }
    write_json_atomic(root / "dataset.json", dataset)
    write_text_atomic(root / "splits_final.json", json.dumps([{"train": train, "val": val}], indent=2) + "\n")
    write_csv_atomic(
        root / "case_mapping.csv",
        [{"case": c, "image_id": r["image_id"], "split": r["split"], "label": r.get("label", "")} for r, c in zip(rows, cases, strict=True)],
        ["case", "image_id", "split", "label"],
    )
    return root


def nnunet_commands(root: Path) -> list[str]:
    """The shell commands that train and predict nnU-Net on an export (fold 0 = our val)."""
    ds = root.name.split("_")[0].removeprefix("Dataset")
    return [
        f"export nnUNet_raw={root.parent} nnUNet_preprocessed=<PRE> nnUNet_results=<RES>",
        f"nnUNetv2_plan_and_preprocess -d {ds} --verify_dataset_integrity",
        f"cp {root / 'splits_final.json'} <PRE>/{root.name}/",
        f"nnUNetv2_train {ds} 2d 0",
        f"nnUNetv2_predict -i {root / 'imagesTs'} -o <PREDS> -d {ds} -c 2d -f 0",
        "fxbench eval --predictions <PREDS> --prepared PREP --split test",
    ]


