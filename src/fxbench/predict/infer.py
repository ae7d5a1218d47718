"""Run folder + split -> predictions artifact (``RUN/predictions/<split>.npz``).

The network runs once per split and TTA mode; tune, ensemble, blend and report read the
artifact and never re-run the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxbench.config import Config, config_from_dict
from fxbench.errors import DataError, UsageError
from fxbench.io import read_json, sha256_file


def load_run_config(run_dir: Path) -> Config:
    import yaml

    path = Path(run_dir) / "config.resolved.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir} is not an fxbench run (no config.resolved.yaml)", "pass a folder made by `fxbench train`")
    return config_from_dict(yaml.safe_load(path.read_text()) or {}, source=str(path))


def checkpoint_path(run_dir: Path, which: str = "best") -> Path:
    path = Path(run_dir) / "checkpoints" / f"{which}.pt"
    if not path.is_file():
        raise DataError(f"no {which} checkpoint in {run_dir}", "train the run first (or pass --which last)")
    return path


def load_run_model(run_dir: Path, which: str = "best", device: torch.device | str = "cpu"):
    """Rebuild the run's network from its config and load the checkpoint strictly."""
    from fxbench.artifacts.checkpoint import load_checkpoint, load_weights_into
    from fxbench.models import build_model
    from fxbench.models.wrapper import FxNet

    cfg = load_run_config(run_dir)
    path = checkpoint_path(run_dir, which)
    ckpt = load_checkpoint(path)
    net = build_model(cfg.model, in_channels=cfg.data.in_channels)
    model = FxNet(net, 0.0, 1.0, cfg.data.in_channels)
    load_weights_into(model, ckpt["model"], source=str(path))
    model.to(device).eval()
    return model, cfg, path


def predict_split(
    run_dir: Path,
    split: str,
    tta: str | None = None,
    prepared: Path | None = None,
    which: str = "best",
    device: str = "auto",
    batch_size: int | None = None,
) -> Path:
    """Predict ``split`` with the run's checkpoint and write ``RUN/predictions/<split>.npz``.

    Returns the artifact path. ``tta`` defaults to the run's ``eval.tta``.
    """
    from fxbench.artifacts.predictions import Predictions, save_predictions
    from fxbench.data.dataset import load_prepared
    from fxbench.models.inference import predict_tensors
    from fxbench.runtime import pick_amp, pick_device

    run_dir = Path(run_dir)
    if split not in ("train", "val", "test"):
        raise UsageError(f"unknown split {split!r}", "use val or test")
    model, cfg, ckpt = load_run_model(run_dir, which, "cpu")
    dev = pick_device(device if device != "auto" else cfg.runtime.device)
    model.to(dev)
    amp = pick_amp(cfg.runtime.amp, dev)
    tta = tta or cfg.eval.tta
    prep = Path(prepared) if prepared else _run_prepared(run_dir, cfg)
    data = load_prepared(prep, cfg.data.image_size, cfg.data.cache_size, splits=(split,), resize=cfg.data.resize,
                         fold=cfg.data.fold)
    _check_split(run_dir, data.split_sha256)
    sd = data.splits[split]
    probs, pres = predict_tensors(
        model, sd.images, sd.boxes, tta=tta, batch_size=batch_size or cfg.train.eval_batch_size,
        device=dev, amp_dtype=amp, topk_frac=cfg.eval.presence_topk_frac,
        channels_last=cfg.runtime.channels_last and dev.type == "cuda",
    )
    meta: dict[str, Any] = {
        "split": split, "tta": tta, "run": run_dir.name, "checkpoint": ckpt.name,
        "checkpoint_sha256": sha256_file(ckpt), "cache_sha256": data.cache_sha256,
        "split_sha256": data.split_sha256, "image_size": cfg.data.image_size, "resize": data.resize,
        "segments": bool(model.segments), "prepared": str(prep.resolve()),
    }
    if cfg.data.fold is not None:
        meta["fold"] = cfg.data.fold  # the split is this cross-validation fold's (fxbench.data.folds)
    pred = Predictions(
        image_ids=list(sd.image_ids), probs=probs.astype(np.float16), masks=sd.masks[:, 0].numpy().astype(np.uint8),
        boxes=sd.boxes, native_hw=sd.native_hw, presence=pres, labels=sd.labels.astype(np.uint8), meta=meta,
    )
    out = run_dir / "predictions" / f"{split}.npz"
    save_predictions(out, pred)
    return out


def _run_prepared(run_dir: Path, cfg: Config) -> Path:
    info = run_dir / "run.json"
    if info.is_file():
        prepared = read_json(info).get("prepared")
        if prepared and Path(prepared).is_dir():
            return Path(prepared)
    if cfg.data.prepared:
        return Path(cfg.data.prepared)
    from fxbench.paths import prepared_dir

    return prepared_dir()


def _check_split(run_dir: Path, split_sha: str) -> None:
    info = run_dir / "run.json"
    if not info.is_file():
        return
    trained = read_json(info).get("split_sha256")
    if trained and trained != split_sha:
        raise DataError(
            f"the prepared split differs from the one {run_dir.name} was trained on (split sha256 mismatch)",
            "pass --prepared with the folder the run used; evaluating on another split would leak training images",
        )


def subgroup_arrays(run_dir: Path, image_ids: list[str], prepared: Path | None = None) -> dict[str, np.ndarray]:
    """Subgroup flags (hand, leg, ..., oblique) for ``image_ids``, from the prepared manifest."""
    from fxbench.data.dataset import read_manifest
    from fxbench.evaluate.subgroups import metadata_from_records

    prep = Path(prepared) if prepared else _run_prepared(run_dir, load_run_config(run_dir))
    return metadata_from_records(image_ids, read_manifest(prep))
