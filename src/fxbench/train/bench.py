"""Throughput benchmark: the seed's data path vs fxbench's trainer vs the bare model.

For each model, on the same synthetic FracAtlas-like JPEGs (about 91% 373x454 / 454x373 and 9%
2304x2880, 20% fractured), it measures training images per second of

  (a) a seed-style loop: per sample, PIL decode of the full JPEG, RGB, resize to S, to tensor,
      batch 4, no workers (what the seed's trainer does);
  (b) fxbench's Trainer on the prepared in-memory cache (sampling, device augmentation, loss);
  (c) the ceiling: the Trainer's own (compiled, when asked) model, loss and optimizer stepping
      on device-resident tensors: no data path, no augmentation, no host sync;

and inference images per second with and without hv TTA (through the compiled model when
``compile_``). Ratios b/a and b/c tell how much the data path costs; on CUDA, b and c are also
given as a fraction of the H200 anchor's hand-written ceiling (docs/performance.md).

Timing rules: every timed window is preceded by warm-up steps that run exactly what is timed
(cuDNN autotuning with ``cudnn.benchmark``, channels_last, compiled graphs, the same shapes) and
is bracketed by device synchronisations. Each model is compiled once per bench: the ceiling and
the inference reuse the Trainer's compiled module. The synthetic data is made once per call
(or once per ``work_dir`` when it is given and already holds it).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: H200 anchor (shared/reference/perf_anchor.md): hand-written ceiling, train img/s at batch 32,
#: bf16, channels_last, fused AdamW; (model, px) -> {eager, compile}; inference bf16 batch 32.
ANCHOR_TRAIN = {
    ("unet_dual", 256): {"eager": 1753.0, "compile": 3040.0},
    ("deeplabv3_resnet50", 384): {"eager": 412.0, "compile": 587.0},
}
ANCHOR_INFER = {("unet_dual", 256): (5796.0, 1925.0), ("deeplabv3_resnet50", 384): (1455.0, 484.0)}


@dataclass
class BenchRow:
    model: str
    image_size: int
    batch: int
    seed_loop: float
    fxbench: float
    ceiling: float
    infer: float
    infer_hv: float

    @property
    def b_over_a(self) -> float:
        return self.fxbench / self.seed_loop if self.seed_loop else float("nan")

    @property
    def b_over_c(self) -> float:
        return self.fxbench / self.ceiling if self.ceiling else float("nan")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _model_cfg(model: str, size: int, batch: int, steps: int, prepared: Path, device: str, amp: str,
               compile_: bool, compile_backend: str = "inductor"):
    from fxbench.config import load_config

    sets = [f"data.prepared={prepared}", f"data.image_size={size}", f"model.name={model}",
            f"train.batch_size={batch}", "train.epochs=1", f"train.max_steps_per_epoch={steps}",
            # enough draws for `steps` full batches even when the train split is small
            f"sampler.epoch_size={steps * batch}",
            "eval.bootstrap=0", f"runtime.device={device}", f"runtime.amp={amp}",
            f"runtime.compile={str(compile_).lower()}", f"runtime.compile_backend={compile_backend}",
            "augment.rotate_prob=0.3", "train.log_every_steps=1000"]
    if model == "unet_dual":
        sets.append("loss.presence_weight=0.35")
    return load_config(None, sets, environ={})


def seed_loop(cfg: Any, jpegs: list[Path], masks: list[Path], steps: int, warmup: int, device: torch.device,
              amp_dtype: torch.dtype | None) -> float:
    """(a): the seed's per-sample PIL pipeline feeding a 3-channel model, batch 4, no workers."""
    from PIL import Image

    from fxbench.models import build_model
    from fxbench.train.losses import SegmentationLoss

    size = cfg.data.image_size
    net = build_model(cfg.model, in_channels=3).to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    loss_fn = SegmentationLoss(cfg.loss)
    rng = np.random.default_rng(0)
    bs = 4

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        from fxbench.data.decode import truncated_loading

        xs, ys = [], []
        for i in rng.integers(0, len(jpegs), bs):
            # The seed sets PIL's LOAD_TRUNCATED_IMAGES (FracAtlas has truncated JPEGs, and so
            # does the synthetic archive); scoped here instead of process-wide.
            with truncated_loading(True), Image.open(jpegs[i]) as im:
                img = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            with Image.open(masks[i]) as m:
                msk = m.convert("L").resize((size, size), Image.Resampling.NEAREST)
            xs.append(torch.from_numpy(np.asarray(img, np.float32) / 255.0).permute(2, 0, 1))
            ys.append(torch.from_numpy((np.asarray(msk) > 127).astype(np.float32))[None])
        return torch.stack(xs), torch.stack(ys)

    def step() -> None:
        x, y = batch()
        _train_step(net, opt, loss_fn, x.to(device), y.to(device), device, amp_dtype)

    return _timed(step, steps, warmup, bs, device)


def ceiling(trainer: Any, steps: int, warmup: int) -> float:
    """(c): the Trainer's model (already compiled and warmed up), loss and optimizer on
    device-resident tensors made once; no data path, no host sync inside the timed steps."""
    cfg, device = trainer.cfg, trainer.device
    size, bs = cfg.data.image_size, cfg.train.batch_size
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand((bs, 1, size, size), generator=g, device=device)
    y = (torch.rand((bs, 1, size, size), generator=g, device=device) > 0.99).float()
    if cfg.runtime.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    trainer.forward_model.train()

    def step() -> None:
        _train_step(trainer.forward_model, trainer.optimizer, trainer.loss_fn, x, y, device, trainer.amp)

    return _timed(step, steps, warmup, bs, device)


def _train_step(fwd: Any, opt: Any, loss_fn: Any, x: torch.Tensor, y: torch.Tensor, device: torch.device,
                amp_dtype: torch.dtype | None) -> None:
    """One optimizer step of the model and loss, as both reference loops run it."""
    from fxbench.models.inference import autocast_ctx

    opt.zero_grad(set_to_none=True)
    with autocast_ctx(device, amp_dtype):
        logits, pres = fwd(x)
    loss, _ = loss_fn(logits, y, pres, 1)
    loss.backward()
    opt.step()


def _timed(step: Callable[[], None], steps: int, warmup: int, per_step: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * per_step / (time.perf_counter() - t0)


def fxbench_trainer(cfg: Any, run_dir: Path, warmup_steps: int) -> tuple[float, Any]:
    """(b): the real Trainer for one epoch of ``max_steps_per_epoch`` steps; img/s of the timed part."""
    from fxbench.train.loop import Trainer

    rates: list[tuple[int, float]] = []
    t_start: dict[str, float] = {}

    def progress(p: Any) -> None:
        if p.event != "step":
            return
        if p.step == warmup_steps:
            _sync(trainer.device)
            t_start["t"] = time.perf_counter()
        elif p.step == p.steps_per_epoch and "t" in t_start:
            _sync(trainer.device)
            rates.append(((p.step - warmup_steps) * cfg.train.batch_size, time.perf_counter() - t_start["t"]))

    trainer = Trainer(cfg, run_dir, on_progress=progress)
    trainer.run()
    n, secs = rates[-1]
    return n / secs, trainer


def inference(trainer: Any, tta: str, batch: int, n_batches: int = 8) -> float:
    """Inference img/s of ``predict_tensors`` through the Trainer's (compiled) model: full batches
    only (no odd last batch, which would re-tune or recompile inside the window), two warm-up
    batches with exactly the timed arguments."""
    from fxbench.models.inference import predict_tensors

    val = trainer.data.splits["val"]
    n = batch * n_batches
    reps = -(-n // max(1, len(val)))
    images = val.images.repeat(reps, 1, 1, 1)[:n].to(trainer.device)
    boxes = np.tile(val.boxes, (reps, 1))[:n]
    kw = {"tta": tta, "batch_size": batch, "device": trainer.device, "amp_dtype": trainer.amp,
          "channels_last": trainer.cfg.runtime.channels_last}
    model = trainer.forward_model
    predict_tensors(model, images[: 2 * batch], boxes[: 2 * batch], **kw)  # warm-up
    _sync(trainer.device)
    t0 = time.perf_counter()
    predict_tensors(model, images, boxes, **kw)
    _sync(trainer.device)
    return len(images) / (time.perf_counter() - t0)


def run_bench(
    models: list[tuple[str, int]],
    n_images: int = 200,
    batch: int = 32,
    steps: int = 20,
    seed_steps: int = 10,
    warmup: int = 3,
    device: str = "auto",
    amp: str = "auto",
    compile_: bool = False,
    image_scale: float = 1.0,
    work_dir: Path | None = None,
    compile_backend: str = "inductor",
    log: Callable[[str], None] = print,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the whole comparison; returns a JSON-able dict with rows and the machine description.

    ``on_row`` receives the partial result after each model (write it out: a run killed at a
    time limit then keeps the rows it finished).
    """
    from fxbench.data.prepare import prepare
    from fxbench.data.synthetic import make_synthetic_archive
    from fxbench.runtime import pick_amp, pick_device

    dev = pick_device(device)
    amp_dtype = pick_amp(amp, dev)
    tmp = tempfile.TemporaryDirectory(prefix="fxbench-bench-") if work_dir is None else None
    root = Path(tmp.name) if tmp else Path(work_dir)  # type: ignore[arg-type]
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        tag = f"n{n_images}-s{image_scale:g}"
        archive = root / f"archive-{tag}"
        if not (archive / "FracAtlas").is_dir():  # once per work_dir: a second bench call reuses it
            log(f"synthesising {n_images} FracAtlas-like JPEGs (scale {image_scale}) ...")
            make_synthetic_archive(archive, n_images=n_images, seed=0, scale=image_scale, large_fraction=0.09,
                                   positive_fraction=0.2, overwrite=True)
        sizes = sorted({s for _, s in models})
        prep = root / f"prepared-{tag}"
        # Worker processes pay off only for many images (each spawned worker imports numpy and PIL).
        prepare(archive, prep, split_mode="grouped", seed=42, cache_sizes=tuple(sizes), cache_format="raw",
                workers=max(1, min(os.cpu_count() or 1, n_images // 32)))
        jpegs, masks = _seed_files(archive, prep)
        timings["data"] = round(time.perf_counter() - t0, 2)
        torch.backends.cudnn.benchmark = True  # as the Trainer sets it; warm-ups absorb the autotuning
        rows = []
        for model, size in models:
            t1 = time.perf_counter()
            cfg = _model_cfg(model, size, batch, steps + warmup, prep, device, amp, compile_, compile_backend)
            log(f"{model} @ {size}px: seed-style loop ...")
            a = seed_loop(cfg, jpegs, masks, seed_steps, max(1, warmup), dev, amp_dtype)
            log(f"{model} @ {size}px: fxbench trainer ...")
            b, trainer = fxbench_trainer(cfg, root / f"run-{model}-{size}-{'c' if compile_ else 'e'}", warmup)
            log(f"{model} @ {size}px: ceiling (the trainer's model, loss and optimizer on device tensors) ...")
            c = ceiling(trainer, steps, warmup)
            log(f"{model} @ {size}px: inference ...")
            inf = inference(trainer, "none", batch, max(2, steps // 2))
            inf_hv = inference(trainer, "hv", batch, max(2, steps // 2))
            rows.append(BenchRow(model, size, batch, round(a, 2), round(b, 2), round(c, 2), round(inf, 2),
                                 round(inf_hv, 2)))
            timings[f"{model}:{size}"] = round(time.perf_counter() - t1, 2)
            if on_row:
                on_row(_result(rows, dev, amp_dtype, compile_, compile_backend, timings, n_images, image_scale, steps,
                               seed_steps, warmup))
    finally:
        if tmp:
            tmp.cleanup()
    return _result(rows, dev, amp_dtype, compile_, compile_backend, timings, n_images, image_scale, steps, seed_steps,
                   warmup)


def _result(rows: list[BenchRow], dev: torch.device, amp_dtype: torch.dtype | None, compile_: bool,
            compile_backend: str, timings: dict[str, float], n_images: int, image_scale: float, steps: int,
            seed_steps: int, warmup: int) -> dict[str, Any]:
    machine = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "device": str(dev), "threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
               "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else "none", "compile": compile_,
               "compile_backend": compile_backend if compile_ else None}
    return {
        "machine": machine, "n_images": n_images, "image_scale": image_scale, "steps": steps,
        "seed_steps": seed_steps, "warmup": warmup, "seconds": timings,
        "rows": [_row_json(r, dev.type == "cuda", compile_) for r in rows],
    }


def _row_json(r: BenchRow, cuda: bool, compiled: bool) -> dict[str, Any]:
    """A row with its ratios: b/a, b/c and, on CUDA, b and c over the H200 anchor's ceiling."""
    out: dict[str, Any] = {**asdict(r), "b_over_a": round(r.b_over_a, 3), "b_over_c": round(r.b_over_c, 3)}
    anchor = ANCHOR_TRAIN.get((r.model, r.image_size))
    if cuda and anchor:
        ref = anchor["compile" if compiled else "eager"]
        out.update(anchor_ceiling=ref, b_over_anchor=round(r.fxbench / ref, 3), c_over_anchor=round(r.ceiling / ref, 3))
    infer = ANCHOR_INFER.get((r.model, r.image_size))
    if cuda and infer:
        out.update(infer_over_anchor=round(r.infer / infer[0], 3), infer_hv_over_anchor=round(r.infer_hv / infer[1], 3))
    return out


def _seed_files(archive: Path, prepared: Path) -> tuple[list[Path], list[Path]]:
    import csv

    root = archive / "FracAtlas" if (archive / "FracAtlas").is_dir() else archive
    with open(prepared / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    jpegs, masks = [], []
    for r in rows:
        folder = "Fractured" if r.get("csv_fractured", r["label"]) in ("1", 1) else "Non_fractured"
        path = root / "images" / folder / r["image_id"]
        if not path.is_file():
            other = "Non_fractured" if folder == "Fractured" else "Fractured"
            path = root / "images" / other / r["image_id"]
        jpegs.append(path)
        masks.append(prepared / "masks" / f"{Path(r['image_id']).stem}.png")
    return jpegs, masks
