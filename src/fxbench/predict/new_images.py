"""``fxbench predict``: a trained run on the user's own images.

Per readable image: ``masks/<name>.png`` at native size (0/255), ``overlays/<name>.png`` (red
contour + presence probability in the corner) and one row in ``predictions.csv`` / ``.json``.
Unreadable files are listed in ``errors.csv`` and skipped; the batch goes on.
"""

from __future__ import annotations

import csv
import io as _io
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.errors import DataError
from fxbench.io import read_json, write_bytes_atomic, write_csv_atomic, write_json_atomic


@dataclass
class ImageResult:
    file: str
    presence_probability: float
    decision: int
    fracture_area_px: int
    components: int
    width: int
    height: int


def _output_stem(path: Path, inputs: list[Path]) -> str:
    """Unique, readable output name: the path relative to its input root, slashes to '__'."""
    for root in inputs:
        if root.is_dir():
            try:
                rel = path.relative_to(root)
                return "__".join(rel.with_suffix("").parts)
            except ValueError:
                continue
    return path.stem


def overlay_png(grey: np.ndarray, mask: np.ndarray, presence: float, decided: int) -> bytes:
    from PIL import Image, ImageDraw
    from skimage.segmentation import find_boundaries

    rgb = np.repeat(grey[..., None], 3, axis=2).copy()
    edge = find_boundaries(mask > 0, mode="thick")
    rgb[edge] = (255, 40, 40)
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im)
    text = f"fracture p={presence:.2f} {'YES' if decided else 'no'}"
    draw.rectangle((0, 0, 8 + 7 * len(text), 16), fill=(0, 0, 0))
    draw.text((4, 2), text, fill=(255, 255, 0) if decided else (200, 200, 200))
    buf = _io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


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
    """Predict every readable image under ``inputs``; returns a summary dict."""
    import torch
    from skimage.measure import label as cc_label

    from fxbench.models.inference import predict_tensors
    from fxbench.predict.images import collect_inputs, letterbox, read_grey, unletterbox
    from fxbench.predict.infer import load_run_model
    from fxbench.train.loop import pick_amp, pick_device

    model, cfg, _ = load_run_model(run_dir, which, "cpu")
    dev = pick_device(device if device != "auto" else cfg.runtime.device)
    model.to(dev)
    amp = pick_amp(cfg.runtime.amp, dev)
    dec_file = decision_path or (Path(run_dir) / "decision.json")
    decision = dict(read_json(dec_file)) if dec_file.is_file() else {}
    threshold = float(decision.get("threshold", cfg.eval.threshold))
    pres_thr = float(decision.get("presence_threshold", cfg.eval.presence_threshold))
    source = decision.get("presence_source", cfg.eval.presence_source)
    tta = tta or decision.get("tta") or cfg.eval.tta
    size = cfg.data.image_size

    files = collect_inputs(inputs)
    if not files:
        raise DataError("no image files found in the inputs", "PNG, JPEG, TIFF, BMP and DICOM (.dcm) are read")
    results: list[ImageResult] = []
    errors: list[dict[str, str]] = []
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(files):
        try:
            grey = read_grey(path)
        except DataError as err:
            errors.append({"file": str(path), "error": str(err)})
            if on_progress:
                on_progress(i + 1, len(files))
            continue
        square, box = letterbox(grey, size)
        probs, pres = predict_tensors(model, torch.from_numpy(square)[None, None], np.array([box]), tta=tta,
                                      batch_size=1, device=dev, amp_dtype=amp, topk_frac=cfg.eval.presence_topk_frac)
        src = source if source in pres else ("head" if "head" in pres else "max")
        p_native = unletterbox(probs[0], box, grey.shape)
        mask = (p_native >= threshold).astype(np.uint8)
        presence = float(pres[src][0])
        decided = int(presence >= pres_thr)
        n_comp = int(cc_label(mask, connectivity=2).max())
        stem = _output_stem(path, inputs)
        from PIL import Image

        buf = _io.BytesIO()
        Image.fromarray(mask * 255).save(buf, format="PNG")
        write_bytes_atomic(out_dir / "masks" / f"{stem}.png", buf.getvalue())
        write_bytes_atomic(out_dir / "overlays" / f"{stem}.png", overlay_png(grey, mask, presence, decided))
        results.append(ImageResult(str(path), round(presence, 6), decided, int(mask.sum()), n_comp,
                                   grey.shape[1], grey.shape[0]))
        if on_progress:
            on_progress(i + 1, len(files))
    rows = [asdict(r) for r in results]
    fields = list(ImageResult.__dataclass_fields__)
    write_csv_atomic(out_dir / "predictions.csv", rows, fields)
    write_json_atomic(out_dir / "predictions.json", {
        "run": str(run_dir), "threshold": threshold, "presence_source": source, "presence_threshold": pres_thr,
        "tta": tta, "decision_file": str(dec_file) if dec_file.is_file() else None, "images": rows, "errors": errors,
    })
    write_csv_atomic(out_dir / "errors.csv", errors, ["file", "error"])
    return {"predicted": len(results), "errors": errors, "out": str(out_dir)}


def read_predictions_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
