"""``fxbench predict``: a trained run on the user's own images.

Per readable image: ``masks/<name>.png`` at native size (0/255), ``overlays/<name>.png`` (the
mask as a semi-transparent red fill with its outline, and the presence score against its
threshold in the corner) and one row in ``predictions.csv`` / ``.json``. Unreadable files are
listed in ``errors.csv`` and skipped; the batch goes on. When no input is readable nothing is
written and the call fails (:class:`~fxbench.errors.DataError`).

**One rule for the decision and the mask** (so the two never contradict each other):

1. decision = presence score >= the decision's ``presence_threshold`` (the rule eval's
   ``precision_presence`` etc. use);
2. the pixel mask is the one ``fxbench eval --resolution native`` scores with: the network's
   probability map (float16, like the predictions artifact), components smaller than the
   decision's ``min_component`` removed at network resolution, the letterbox inverted with
   :func:`fxbench.evaluate.native.to_native`, then ``prob >= threshold``;
3. the written mask is that pixel mask for images decided positive and empty for the others:
   a non-empty mask always comes with decision 1. ``pixels_above_threshold`` keeps the
   ungated pixel count, so a negative call with many bright pixels stays visible in the table.

Components are counted with 8-connectivity, as in the lesion metrics.
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.errors import ConfigError, DataError, UsageError
from fxbench.io import read_json, write_bytes_atomic, write_csv_atomic, write_json_atomic

#: Images sent through the network together.
BATCH = 8
#: Presence sources that are probabilities (labelled ``p``); others are named (``pred_area``).
PROBABILITY_SOURCES = ("head", "max", "topk_mean", "mean", "blend")


@dataclass
class ImageResult:
    file: str
    presence_probability: float
    presence_threshold: float
    decision: int
    fracture_area_px: int
    pixels_above_threshold: int
    components: int
    width: int
    height: int
    mask: str
    overlay: str


def _output_stem(path: Path, inputs: list[Path]) -> str:
    """Readable output name: the path relative to its input folder, slashes to '__'.

    Files named directly keep their stem. Uniqueness is handled by :func:`_unique`.
    """
    for root in inputs:
        if root.is_dir():
            try:
                rel = path.relative_to(root)
            except ValueError:
                continue
            return "__".join(rel.with_suffix("").parts)
    return path.stem


def _unique(stem: str, path: Path, used: set[str]) -> str:
    """``stem``, or ``stem.<ext>`` / ``stem.<ext>-2``... when another input already took it
    (``a.png`` and ``a.jpg`` in one folder must not overwrite each other's outputs)."""
    candidates = [stem, f"{stem}.{path.suffix.lstrip('.').lower()}" if path.suffix else f"{stem}-2"]
    for name in candidates:
        if name.lower() not in used:
            used.add(name.lower())
            return name
    k = 2
    while f"{candidates[1]}-{k}".lower() in used:
        k += 1
    used.add(f"{candidates[1]}-{k}".lower())
    return f"{candidates[1]}-{k}"


def side_digits(value: float, threshold: float, least: int = 2, most: int = 6) -> tuple[str, str]:
    """``value`` and ``threshold`` printed with the fewest digits (``least``..``most``) that tell
    them apart, so a rounded label never hides which side of the threshold a score is on
    (rounding is monotone, so distinct printed values keep their order). A short threshold
    (0.435) is never shown shorter than it is, up to 4 digits."""
    short = next((d for d in range(least, 5) if float(f"{threshold:.{d}f}") == threshold), 4)
    for d in range(max(least, short), most + 1):
        a, b = f"{value:.{d}f}", f"{threshold:.{d}f}"
        if a != b:
            return a, b
    return f"{value:.{most}f}", f"{threshold:.{most}f}"


def decision_label(presence: float, threshold: float, decided: int, name: str = "p") -> str:
    """``fracture: YES (p 0.4312 >= 0.4300)`` / ``fracture: no (p 0.4288 < 0.4300)``; ``name``
    names the score (the presence source: ``pred_area`` is an area share, not a probability)."""
    a, b = side_digits(presence, threshold)
    return f"fracture: YES ({name} {a} >= {b})" if decided else f"fracture: no ({name} {a} < {b})"


def overlay_png(grey: np.ndarray, mask: np.ndarray, presence: float, decided: int,
                presence_threshold: float = 0.5, score_name: str = "p") -> bytes:
    """RGB PNG of ``grey`` with the mask filled semi-transparently in red (outline opaque), and
    the decision with the presence score against its threshold in the corner.

    A mask covering the whole image therefore reads as "all of it", not as "nothing found".
    Line width and text size grow with the image, so both stay visible on a full-size radiograph.
    """
    from PIL import Image, ImageDraw, ImageFont
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    h, w = grey.shape
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    inside = mask > 0
    rgb[inside] = 0.6 * rgb[inside] + 0.4 * np.array([255, 40, 40], np.float32)
    rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    edge = find_boundaries(inside, mode="inner")
    edge[0, :], edge[-1, :], edge[:, 0], edge[:, -1] = inside[0, :], inside[-1, :], inside[:, 0], inside[:, -1]
    grow = max(0, round(min(h, w) / 500))
    if grow and edge.any():
        edge = binary_dilation(edge, iterations=grow) & inside
    rgb[edge] = (255, 40, 40)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    text = decision_label(presence, presence_threshold, decided, score_name)
    font_px = max(11, min(h, w) // 30)
    try:
        font = ImageFont.load_default(size=font_px)
    except (TypeError, OSError):  # Pillow < 10.1 or no FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    x0, y0, x1, y1 = draw.textbbox((4, 2), text, font=font)
    if x1 > w:  # a small image: the short form "YES 0.53>=0.17"
        text = text.split(": ", 1)[1].replace(f"({score_name} ", "").replace(" >= ", ">=").replace(" < ", "<").rstrip(")")
        x0, y0, x1, y1 = draw.textbbox((4, 2), text, font=font)
    draw.rectangle((0, 0, x1 + 4, y1 + 3), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 0) if decided else (200, 200, 200), font=font)
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _png(mask01: np.ndarray) -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    Image.fromarray((mask01 > 0).astype(np.uint8) * 255).save(buf, format="PNG")
    return buf.getvalue()


def native_mask(prob: np.ndarray, box: Any, native_hw: tuple[int, int], threshold: float,
                min_component: int = 0) -> np.ndarray:
    """Network-resolution probabilities [S,S] -> bool mask at native size (eval's native rule)."""
    from fxbench.evaluate.metrics import remove_small_components, threshold_probs
    from fxbench.evaluate.native import to_native

    prob = np.asarray(prob, dtype=np.float16)
    if min_component > 1:
        cache_pred = threshold_probs(prob, threshold)
        dropped = cache_pred & ~remove_small_components(cache_pred, min_component)
        if dropped.any():
            prob = np.where(dropped, np.float16(0), prob)
    return threshold_probs(to_native(prob, box, native_hw), threshold)


def _run_cache_size(run_dir: Path, cfg: Any) -> int:
    """Edge of the cache the run was trained from (run.json ``cache``, e.g. ``512.npz``)."""
    info = Path(run_dir) / "run.json"
    if info.is_file():
        from fxbench.data.cache import parse_cache_key

        name = str(read_json(info).get("cache") or "")
        parsed = parse_cache_key(name.removesuffix(".npz"))
        if parsed is not None:
            return parsed[0]
    return int(cfg.data.cache_size or cfg.data.image_size)


def _decision(run_dir: Path, cfg: Any, decision_path: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The operating point: the named decision file (must exist), else RUN/decision.json if the
    run has one, else the config's ``eval`` defaults."""
    from fxbench.artifacts.decision import read_decision

    if decision_path is not None:
        path: Path | None = Path(decision_path)
    else:
        path = Path(run_dir) / "decision.json"
        if not path.is_file():
            path = None
    if path is None:
        ev = cfg.eval
        return {"threshold": ev.threshold, "presence_source": ev.presence_source,
                "presence_threshold": ev.presence_threshold, "min_component": ev.min_component,
                "tta": None, "source": "config"}, None
    return read_decision(path).to_dict(), path


def predict_images(
    run_dir: Path,
    inputs: list[Path],
    out_dir: Path,
    decision_path: Path | None = None,
    tta: str | None = None,
    which: str = "best",
    device: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Predict every readable image under ``inputs``; returns a summary dict.

    Raises:
        DataError: no input files, none of them readable (nothing is written then), or a
            decision file that is missing or malformed.
        UsageError: ``tta`` differs from the decision's, or the decision's presence source is
            not one this run produces (e.g. a blend's).
    """
    import torch

    from fxbench.evaluate.metrics import label_components
    from fxbench.evaluate.presence import pred_area_scores
    from fxbench.evaluate.rules import resolve_presence_source
    from fxbench.models.inference import predict_tensors
    from fxbench.predict.images import collect_inputs, network_input, read_grey
    from fxbench.predict.infer import load_run_model
    from fxbench.runtime import pick_amp, pick_device

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    inputs = [Path(p) for p in inputs]
    files = collect_inputs(inputs)
    if not files:
        raise DataError("no image files found in the inputs", "PNG, JPEG, TIFF, BMP and DICOM (.dcm) are read")
    model, cfg, _ = load_run_model(run_dir, which, "cpu")
    dec, dec_file = _decision(run_dir, cfg, decision_path)
    if tta and dec.get("tta") and tta != dec["tta"]:
        raise UsageError(f"--tta {tta} differs from the decision's tta {dec['tta']}",
                         "drop --tta; the decision's threshold was chosen for its own TTA")
    tta = tta or dec.get("tta") or cfg.eval.tta
    threshold = float(dec["threshold"])
    pres_thr = float(dec["presence_threshold"])
    min_component = int(dec.get("min_component") or 0)
    sources = ["max", "topk_mean", "mean", "pred_area"] + (["head"] if model.has_presence_head else [])
    try:
        source = resolve_presence_source(sources, str(dec.get("presence_source") or "auto"))
    except ConfigError as err:  # say it in predict's terms
        raise UsageError(
            f"the decision's presence source {dec.get('presence_source')!r} is not produced by {run_dir.name} "
            f"(it gives {', '.join(sorted(sources))})",
            "predict applies a single run's decision: use the decision file written by `fxbench tune` for this run",
        ) from err

    dev = pick_device(device if device != "auto" else cfg.runtime.device)
    model.to(dev)
    amp = pick_amp(cfg.runtime.amp, dev)
    size = cfg.data.image_size
    cache_size = _run_cache_size(run_dir, cfg)

    results: list[ImageResult] = []
    errors: list[dict[str, str]] = []
    used: set[str] = set()
    done = 0

    def flush(batch: list[tuple[Path, np.ndarray, np.ndarray, np.ndarray]]) -> None:
        nonlocal done
        if not batch:
            return
        squares = torch.from_numpy(np.stack([b[2] for b in batch]))[:, None]
        boxes = np.stack([b[3] for b in batch])
        probs, pres = predict_tensors(model, squares, boxes, tta=tta, batch_size=len(batch), device=dev,
                                      amp_dtype=amp, topk_frac=cfg.eval.presence_topk_frac)
        if source == "pred_area":
            pres["pred_area"] = pred_area_scores(probs, boxes, threshold, min_component)
        for k, (path, grey, _, box) in enumerate(batch):
            pixels = native_mask(probs[k], box, grey.shape, threshold, min_component)
            presence = float(pres[source][k])
            decided = int(presence >= pres_thr)
            mask = pixels if decided else np.zeros_like(pixels)  # the module's rule 3
            _, n_comp = label_components(mask)
            stem = _unique(_output_stem(path, inputs), path, used)
            write_bytes_atomic(out_dir / "masks" / f"{stem}.png", _png(mask))
            write_bytes_atomic(out_dir / "overlays" / f"{stem}.png",
                               overlay_png(grey, mask, presence, decided, pres_thr,
                                           "p" if source in PROBABILITY_SOURCES else source))
            results.append(ImageResult(str(path), presence, pres_thr, decided, int(mask.sum()), int(pixels.sum()),
                                       n_comp, int(grey.shape[1]), int(grey.shape[0]), f"masks/{stem}.png",
                                       f"overlays/{stem}.png"))
            done += 1
            if on_progress:
                on_progress(done + len(errors), len(files))
        batch.clear()

    pending: list[tuple[Path, np.ndarray, np.ndarray, np.ndarray]] = []
    for path in files:
        try:
            grey = read_grey(path)
        except DataError as err:
            errors.append({"file": str(path), "error": str(err)})
            if on_progress:
                on_progress(done + len(errors), len(files))
            continue
        square, box = network_input(grey, size, cache_size, cfg.data.resize)
        pending.append((path, grey, square, box))
        if len(pending) >= BATCH:
            flush(pending)
    flush(pending)
    if not results:  # nothing readable: fail, and leave no empty table or folders behind
        raise DataError(f"none of the {len(files)} input files is a readable image (first: {errors[0]['error']})",
                        "give PNG, JPEG, TIFF, BMP or DICOM files; see the message for what is wrong with them")

    rows = [asdict(r) for r in results]
    fields = list(ImageResult.__dataclass_fields__)
    write_csv_atomic(out_dir / "predictions.csv", rows, fields)
    write_json_atomic(out_dir / "predictions.json", {
        "run": str(run_dir), "checkpoint": f"{which}.pt", "threshold": threshold, "min_component": min_component,
        "presence_source": source, "presence_threshold": pres_thr, "tta": tta,
        "decision_file": str(dec_file) if dec_file is not None else None,
        "decision_source": dec.get("source"), "image_size": size, "cache_size": cache_size, "resize": cfg.data.resize,
        "images": rows, "errors": errors,
    })
    write_csv_atomic(out_dir / "errors.csv", errors, ["file", "error"])
    return {"predicted": len(results), "positive": sum(r.decision for r in results), "errors": errors,
            "out": str(out_dir), "presence_source": source, "presence_threshold": pres_thr, "threshold": threshold}


def read_predictions_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
