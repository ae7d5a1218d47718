"""The training loop: data resident in memory, augmentation on the device, exact resume.

Determinism and resume: the sampler's indices, the augmentation generator and the global
torch RNG are all re-seeded from (seed, epoch) at the start of each epoch. A checkpoint taken
mid-epoch (on SIGINT/SIGTERM) also stores the generators' states and the step reached, so a
resumed run replays exactly the same batches and ends with bit-identical weights on CPU.
"""

from __future__ import annotations

import copy
import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fxbench.artifacts.checkpoint import load_checkpoint, load_weights_into, save_checkpoint
from fxbench.artifacts.run import (
    check_selection_metric,
    environment,
    now_iso,
    run_lock,
    update_run_json,
)
from fxbench.config import Config
from fxbench.errors import CheckpointError, TrainingDivergedError
from fxbench.io import sha256_file, write_csv_atomic, write_json_atomic, write_text_atomic
from fxbench.runtime import dist_info, pick_amp, pick_device, seed_everything

HISTORY_FIELDS = [
    "epoch", "step", "lr", "train_loss", "presence_weight", "seconds", "img_per_s",
    "val_dice_pos", "val_iou_pos", "val_dice", "val_roc_auc_presence",
    "val_average_precision_presence", "val_loss", "selection", "best",
]


@dataclass
class Progress:
    """What the loop reports to a UI callback after each step / validation."""

    epoch: int
    epochs: int
    step: int
    steps_per_epoch: int
    loss: float
    lr: float
    img_per_s: float
    val: dict[str, float] = field(default_factory=dict)
    event: str = "step"


# ------------------------------------------------------------------ schedule


def lr_factor(step: int, total: int, steps_per_epoch: int, cfg: Config) -> float:
    """Multiplier on the base LR at optimizer step ``step`` (0-based) of ``total``."""
    sc = cfg.schedule
    if sc.name == "onecycle":
        peak = sc.max_lr or cfg.optim.lr
        start, end = peak / sc.div_factor, peak / (sc.div_factor * sc.final_div_factor)
        up = max(1, int(sc.pct_start * total))
        if step < up:
            t = step / up
            lr = start + (peak - start) * (1 - math.cos(math.pi * t)) / 2
        else:
            t = min(1.0, (step - up) / max(1, total - up))
            lr = end + (peak - end) * (1 + math.cos(math.pi * t)) / 2
        return lr / cfg.optim.lr
    warm = int(sc.warmup_epochs * steps_per_epoch)
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    floor = sc.min_lr / cfg.optim.lr
    if sc.name == "cosine":
        return floor + (1 - floor) * (1 + math.cos(math.pi * t)) / 2
    if sc.name == "poly":
        return floor + (1 - floor) * (1 - t) ** sc.poly_power
    return 1.0


def build_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if cfg.optim.no_decay_norm_bias and (p.ndim <= 1 or name.endswith(".bias")) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.optim.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov)
    # Fused AdamW on CUDA and CPU: one kernel per step, and no per-parameter `step.item()`
    # readback (the unfused path's host sync).
    fused = device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps, fused=fused)


class Ema:
    """EMA of every floating state entry (parameters and BatchNorm buffers)."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup_steps: int) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup, self.updates = decay, warmup_steps, 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = 0.0 if self.updates <= self.warmup else self.decay
        src = model.state_dict()
        for key, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(src[key].detach(), alpha=1 - d)
            else:
                value.copy_(src[key])


class LossMeter:
    """Training-loss statistics kept on the device; ``read`` is the one host sync.

    ``add`` accumulates the epoch's loss sum and remembers the first non-finite loss (value and
    step) with tensor ops only, so a diverging run is caught at the next ``read`` (every
    ``train.log_every_steps`` and at epoch end) rather than by a per-step ``if``.
    """

    def __init__(self, device: torch.device) -> None:
        self.total = torch.zeros((), device=device)
        self.latest = torch.zeros((), device=device)
        self.bad_step = torch.full((), -1, dtype=torch.float32, device=device)
        self.bad_value = torch.zeros((), device=device)
        self.count = 0
        self.last = float("nan")
        self.mean = float("nan")

    def add(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.float()
        self.total += loss
        self.latest = loss
        first_bad = ~torch.isfinite(loss) & (self.bad_step < 0)
        self.bad_step = torch.where(first_bad, float(step), self.bad_step)
        self.bad_value = torch.where(first_bad, loss, self.bad_value)
        self.count += 1

    def read(self, epoch: int) -> None:
        """Copy the statistics to the host (one sync); raise if any loss so far was not finite."""
        total, latest, bad_step, bad_value = torch.stack(
            [self.total, self.latest, self.bad_step, self.bad_value]).tolist()
        if bad_step >= 0:
            raise TrainingDivergedError(
                f"loss became {bad_value} at epoch {epoch}, step {int(bad_step) + 1}",
                "lower optim.lr, set optim.grad_clip_norm=1.0, or use runtime.amp=bf16 instead of fp16",
            )
        self.last = latest
        self.mean = total / max(self.count, 1)


# ------------------------------------------------------------------ the trainer


class Trainer:
    """Trains one run folder. ``run()`` returns the run summary dict."""

    def __init__(self, cfg: Config, run_dir: Path, resume: bool = False,
                 on_progress: Callable[[Progress], None] | None = None) -> None:
        self.cfg, self.run_dir, self.resume = cfg, Path(run_dir), resume
        self.on_progress = on_progress or (lambda p: None)
        self.rank, self.world = dist_info()
        self.stop_requested: str | None = None

    # -- set-up ----------------------------------------------------------------
    def _setup(self) -> None:
        from fxbench.data.augment import Augmenter
        from fxbench.data.dataset import load_prepared
        from fxbench.models import build_model, new_head_prefixes
        from fxbench.models.wrapper import FxNet, normalization_stats
        from fxbench.paths import prepared_dir
        from fxbench.train.losses import SegmentationLoss
        from fxbench.train.samplers import BalancedSampler

        cfg = self.cfg
        if cfg.runtime.num_threads:
            torch.set_num_threads(cfg.runtime.num_threads)
        self.device = pick_device(cfg.runtime.device)
        if self.world > 1:
            # Order matters on NCCL: bind this process to its GPU first, then create the group
            # on it (otherwise every rank's first collective lands on cuda:0).
            if self.device.type == "cuda":
                local = int(os.environ.get("LOCAL_RANK", "0"))
                torch.cuda.set_device(local)
                self.device = torch.device("cuda", local)
            if not torch.distributed.is_initialized():
                if self.device.type == "cuda":
                    torch.distributed.init_process_group("nccl", device_id=self.device)
                else:
                    torch.distributed.init_process_group("gloo")
        self.amp = pick_amp(cfg.runtime.amp, self.device)
        torch.backends.cudnn.benchmark = cfg.runtime.cudnn_benchmark and not cfg.runtime.deterministic
        if cfg.runtime.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)

        prep = cfg.data.prepared or prepared_dir()
        self.data = load_prepared(
            prep, cfg.data.image_size, cfg.data.cache_size, splits=("train", "val"), resize=cfg.data.resize,
            fold=cfg.data.fold,
        )
        check_selection_metric(cfg.train.selection_metric, self.data.splits["val"].labels)
        train = self.data.splits["train"]
        on_gpu = self.device.type == "cuda"
        # The uint8 train set is small (2,858 x 256^2 = 187 MB): keep it on the device. Masks are
        # kept for positive images only (82% of FracAtlas masks are empty), and the host copy of a
        # set moved to the GPU is dropped, so host RAM stays low even with a 512-px cache.
        self.train_labels = train.labels
        pos_rows = np.flatnonzero(train.labels > 0)
        mask_row = np.full(len(train), -1, dtype=np.int64)
        mask_row[pos_rows] = np.arange(len(pos_rows))
        self.mask_row = torch.from_numpy(mask_row).to(self.device)
        self.train_positive = torch.from_numpy(train.labels > 0).to(self.device)
        self.train_masks_pos = train.masks[torch.from_numpy(pos_rows)].to(self.device)
        self.train_images = train.images.to(self.device)
        train.masks = torch.empty((0, 1, 1, 1), dtype=torch.uint8)  # no longer needed in full
        if on_gpu:
            train.images = self.train_images

        mean, std = normalization_stats(cfg.data.normalize, self.data.mean, self.data.std)
        # Initial weights come from the global RNG: seed it so a seed means one network.
        seed_everything(cfg.train.seed)
        net = build_model(cfg.model, in_channels=cfg.data.in_channels)
        self.model = FxNet(net, mean, std, cfg.data.in_channels).to(self.device)
        if cfg.runtime.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.init_info: dict[str, Any] | None = None
        if cfg.train.init_checkpoint and not self.resume:
            self._warm_start(Path(cfg.train.init_checkpoint), new_head_prefixes(net))
        self.ema = Ema(self.model, cfg.train.ema.decay, cfg.train.ema.warmup_steps) if cfg.train.ema.enabled else None
        self.ddp_model: torch.nn.Module = self.model
        if self.world > 1:
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if on_gpu else None
            )
        self.forward_model = (
            torch.compile(self.ddp_model, backend=cfg.runtime.compile_backend) if cfg.runtime.compile else self.ddp_model
        )

        self.loss_fn = SegmentationLoss(cfg.loss)
        self.augmenter = Augmenter(cfg.augment) if cfg.augment.enabled else None
        self.sampler = BalancedSampler(
            self.train_labels, cfg.sampler.positive_fraction, cfg.sampler.epoch_size, cfg.train.seed,
            balanced=cfg.sampler.balanced,
        )
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16 and on_gpu)
        n_draws = len(self.sampler.epoch_indices(1)) // self.world
        self.steps_per_epoch = max(1, n_draws // cfg.train.batch_size)
        if cfg.train.max_steps_per_epoch:
            self.steps_per_epoch = min(self.steps_per_epoch, cfg.train.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * cfg.train.epochs

    def _warm_start(self, path: Path, new_heads: tuple[str, ...]) -> None:
        ckpt = load_checkpoint(path)
        prefixed = tuple(f"net.{p}" for p in new_heads)
        state = ckpt["model"]
        # Keep this run's normalisation: the warm start brings weights, not data statistics.
        state = {k: v for k, v in state.items() if k not in ("mean", "std")}
        load_weights_into(self.model, state, allowed_missing=(*prefixed, "mean", "std"), source=str(path))
        self.init_info = {"path": str(path.resolve()), "sha256": sha256_file(path)}

    # -- checkpoint state --------------------------------------------------------
    def _state(self, epoch: int, next_step: int, best: dict[str, Any], gen: torch.Generator) -> dict[str, Any]:
        return {
            "config_sha256": self.cfg.sha256(),
            "config_yaml": self.cfg.to_yaml(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "ema": {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()} if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "next_step": next_step,
            "global_step": self.global_step,
            "best": best,
            "rng_torch": torch.get_rng_state(),
            "rng_aug": gen.get_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "has_presence_head": self.model.has_presence_head,
            "sampler": self.sampler.state_dict(),
        }

    def _eval_weights(self) -> torch.nn.Module:
        return self.ema.module if self.ema else self.model

    # -- validation ---------------------------------------------------------------
    def _validate(self) -> dict[str, float]:
        from fxbench.evaluate import (
            presence_metrics,
            resolve_presence_source,
            segmentation_metrics,
            with_composites,
        )
        from fxbench.models.inference import predict_tensors

        val = self.data.splits["val"]
        ev = self.cfg.eval
        probs, pres = predict_tensors(
            self._eval_weights(), val.images, val.boxes, tta=ev.tta, batch_size=self.cfg.train.eval_batch_size,
            device=self.device, amp_dtype=self.amp, topk_frac=ev.presence_topk_frac,
            channels_last=self.cfg.runtime.channels_last,
        )
        masks = val.masks[:, 0].numpy().astype(bool)
        seg = segmentation_metrics(probs, masks, ev.threshold, ev.min_component)
        if ev.presence_source == "pred_area":  # depends on the pixel threshold: never produced by inference
            from fxbench.evaluate import pred_area_scores

            pres["pred_area"] = pred_area_scores(probs, val.boxes, ev.threshold, ev.min_component)
        source = resolve_presence_source(pres, ev.presence_source)
        prm = presence_metrics(pres[source], val.labels, ev.presence_threshold)
        out = {k: float(v) for k, v in {**seg, **prm}.items() if isinstance(v, (int, float, np.floating, np.integer))}
        out["loss"] = _pixel_bce(probs, masks)
        out["neg_loss"] = -out["loss"]
        return with_composites(out)

    # -- main -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        # Handlers first: a SIGINT/SIGTERM during the lock, set-up or run.json write only sets the
        # flag, and the first step saves a resumable last.pt (it used to kill or fail the run).
        old_handlers = self._install_signals()
        try:
            if self.rank == 0:
                self.run_dir.mkdir(parents=True, exist_ok=True)
                with run_lock(self.run_dir):
                    return self._run_locked()
            return self._run_locked()
        finally:
            for sig, h in old_handlers.items():
                signal.signal(sig, h)

    def _install_signals(self) -> dict[int, Any]:
        old: dict[int, Any] = {}

        def handler(signum: int, frame: Any) -> None:  # noqa: ARG001
            self.stop_requested = signal.Signals(signum).name

        # SIGUSR1: SLURM's warning before a time limit or pre-emption (fxbench.launch.slurm).
        for sig in (signal.SIGINT, signal.SIGTERM, *([signal.SIGUSR1] if hasattr(signal, "SIGUSR1") else [])):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread)
                pass
        return old

    def _run_locked(self) -> dict[str, Any]:
        self._setup()
        cfg, run_dir = self.cfg, self.run_dir
        ckpt_dir = run_dir / "checkpoints"
        best: dict[str, Any] = {"score": None, "epoch": None, "metric": cfg.train.selection_metric, "stale": 0}
        history: list[dict[str, Any]] = []
        start_epoch, start_step, self.global_step = 1, 0, 0
        gen = torch.Generator(device=self.device)
        restored = None
        if self.resume:
            restored = self._restore(ckpt_dir / "last.pt")
            start_epoch, start_step, best = restored["epoch"], restored["next_step"], restored["best"]
            self.global_step = restored["global_step"]
            history = _read_history(run_dir / "history.csv")
        elif self.rank == 0:
            self._write_run_start()
        status = "failed"
        try:
            for epoch in range(start_epoch, cfg.train.epochs + 1):
                if restored is not None and start_step > 0 and epoch == start_epoch:
                    torch.set_rng_state(restored["rng_torch"])
                    gen.set_state(restored["rng_aug"])
                    first = start_step
                else:
                    torch.manual_seed(cfg.train.seed * 100_003 + epoch)
                    gen.manual_seed(cfg.train.seed * 7_919 + epoch)
                    first = 0
                row = self._train_epoch(epoch, first, gen, best, ckpt_dir)
                if row is None:  # interrupted
                    status = "interrupted"
                    return self._finish(status, best, history)
                validate = epoch % cfg.train.val_every_epochs == 0 or epoch == cfg.train.epochs
                if validate:
                    row.update(self._validate_and_select(epoch, best, ckpt_dir))
                history.append(row)
                if cfg.sampler.hard_negative_mining and epoch < cfg.train.epochs:
                    self._mine_hard_negatives()
                if self.rank == 0:
                    if epoch % cfg.train.last_every_epochs == 0 or epoch == cfg.train.epochs:
                        save_checkpoint(ckpt_dir / "last.pt", self._state(epoch + 1, 0, best, gen))
                    write_csv_atomic(run_dir / "history.csv", history, HISTORY_FIELDS)
                patience = cfg.train.early_stopping_patience
                if patience and best["stale"] >= patience:
                    self.on_progress(Progress(epoch, cfg.train.epochs, 0, self.steps_per_epoch, 0.0, 0.0, 0.0,
                                              event="early_stop"))
                    break
            status = "finished"
            return self._finish(status, best, history)
        except BaseException:
            if self.rank == 0:
                update_run_json(run_dir, status="failed", ended=now_iso())
            raise

    def _train_epoch(self, epoch: int, first: int, gen: torch.Generator, best: dict[str, Any],
                     ckpt_dir: Path) -> dict[str, Any] | None:
        from fxbench.train.samplers import shard

        cfg = self.cfg
        bs = cfg.train.batch_size
        idx_all = self.sampler.epoch_indices(epoch)
        if self.world > 1:
            idx_all = shard(idx_all, self.rank, self.world)
        # The epoch's indices travel to the device once (pinned, non-blocking); steps slice them there.
        idx_host = torch.from_numpy(np.ascontiguousarray(idx_all[: self.steps_per_epoch * bs]))
        if self.device.type == "cuda":
            idx_host = idx_host.pin_memory()
        idx_epoch = idx_host.to(self.device, non_blocking=True)
        self.ddp_model.train()
        pw = self.loss_fn.presence_weight_at(epoch)
        meter = LossMeter(self.device)
        t0, seen, lr = time.perf_counter(), 0, 0.0
        for step in range(first, self.steps_per_epoch):
            if self.stop_requested:
                if self.rank == 0:
                    save_checkpoint(ckpt_dir / "last.pt", self._state(epoch, step, best, gen))
                return None
            lr = cfg.optim.lr * lr_factor(self.global_step, self.total_steps, self.steps_per_epoch, cfg)
            loss = self._step(idx_epoch[step * bs : (step + 1) * bs], epoch, gen, lr)
            meter.add(loss, step)
            self.global_step += 1
            seen += bs * self.world
            if (step + 1 - first) % cfg.train.log_every_steps == 0 or step + 1 == self.steps_per_epoch:
                meter.read(epoch)  # the only host sync of the loop: every N steps and at epoch end
            ips = seen / max(time.perf_counter() - t0, 1e-9)
            self.on_progress(Progress(epoch, cfg.train.epochs, step + 1, self.steps_per_epoch, meter.last, lr, ips))
        secs = time.perf_counter() - t0
        return {
            "epoch": epoch, "step": self.global_step, "lr": lr,
            "train_loss": meter.mean, "presence_weight": pw,
            "seconds": round(secs, 3), "img_per_s": round(seen / max(secs, 1e-9), 2),
        }

    def _step(self, dev_idx: torch.Tensor, epoch: int, gen: torch.Generator, lr: float) -> torch.Tensor:
        """One optimizer step on train rows ``dev_idx`` (on the device); returns the detached loss.

        Nothing here waits for the device: indices, masks, labels and augmentation parameters
        are on it, the loss and its parts stay there (``LossMeter`` reads them back every
        ``train.log_every_steps``), and no Python branch depends on a device value.
        """
        from fxbench.models.inference import autocast_ctx
        from fxbench.train.samplers import crop_patches

        cfg = self.cfg
        x = self.train_images.index_select(0, dev_idx).float().div_(255.0)
        y = self._gather_masks(dev_idx, x.shape)
        positive = self.train_positive.index_select(0, dev_idx)
        if cfg.sampler.patch.enabled:
            x, y = crop_patches(x, y, positive, cfg.sampler.patch, gen)
        if self.augmenter is not None:
            x, y = self.augmenter(x, y, positive, gen)
        if cfg.runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_ctx(self.device, self.amp):
            logits, pres = self.forward_model(x)
        loss, _parts = self.loss_fn(logits, y, pres, epoch)
        self.scaler.scale(loss).backward()
        if cfg.optim.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        return loss.detach()

    def _gather_masks(self, idx: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Float masks [B,1,H,W] for train rows ``idx``: zeros, filled in for positive images."""
        if len(self.train_masks_pos) == 0:
            return torch.zeros(shape, device=self.device)
        rows = self.mask_row.index_select(0, idx)
        # Gather with clamped rows and zero the negatives: no host sync on the hot path.
        y = self.train_masks_pos.index_select(0, rows.clamp(min=0)).float()
        return y * (rows >= 0).view(-1, 1, 1, 1)

    def _validate_and_select(self, epoch: int, best: dict[str, Any], ckpt_dir: Path) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.rank == 0:
            val = self._validate()
            score = val.get(self.cfg.train.selection_metric, float("nan"))
            improved = not math.isnan(score) and (best["score"] is None or score > best["score"])
            if improved:
                best.update(score=score, epoch=epoch, stale=0, val=val)
                state = self._eval_weights().state_dict()
                save_checkpoint(ckpt_dir / "best.pt", {
                    "config_sha256": self.cfg.sha256(), "config_yaml": self.cfg.to_yaml(),
                    "model": {k: v.detach().cpu() for k, v in state.items()},
                    "epoch": epoch, "metrics": val, "has_presence_head": self.model.has_presence_head,
                })
            else:
                best["stale"] += 1
            out = {f"val_{k}": round(v, 6) for k, v in val.items() if f"val_{k}" in HISTORY_FIELDS}
            out.update(selection=score, best=int(improved))
            self.on_progress(Progress(epoch, self.cfg.train.epochs, self.steps_per_epoch, self.steps_per_epoch,
                                      0.0, 0.0, 0.0, val=val, event="val"))
        if self.world > 1:
            flag = torch.tensor([best["stale"]], device=self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.broadcast(flag, 0)
            best["stale"] = int(flag.item())
        return out

    @torch.no_grad()
    def _mine_hard_negatives(self) -> None:
        """Score every train negative; the top quarter by max probability become hard negatives.

        Every rank computes the same list (same weights after DDP sync), so no broadcast is needed.
        """
        from fxbench.models.inference import predict_tensors

        train = self.data.splits["train"]
        neg = np.flatnonzero(self.train_labels == 0)
        if len(neg) == 0:
            return
        _, pres = predict_tensors(
            self.model, train.images[neg], train.boxes[neg], batch_size=self.cfg.train.eval_batch_size,
            device=self.device, amp_dtype=self.amp,
        )
        k = max(1, len(neg) // 4)
        hard = neg[np.argsort(-pres["max"], kind="stable")[:k]]
        self.sampler.set_hard_negatives(hard, self.cfg.sampler.mining_fraction)

    def _restore(self, path: Path) -> dict[str, Any]:
        ckpt = load_checkpoint(path, map_location="cpu")
        if ckpt.get("config_sha256") != self.cfg.sha256():
            raise CheckpointError(
                f"cannot resume {self.run_dir}: its config changed since the checkpoint",
                "resume with the run's own config.resolved.yaml (no --set), or start a new run",
            )
        load_weights_into(self.model, ckpt["model"], source=str(path))
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.module.load_state_dict(ckpt["ema"])
            self.ema.updates = ckpt.get("ema_updates", 0)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("sampler") is not None:
            self.sampler.load_state_dict(ckpt["sampler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if ckpt.get("rng_cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ckpt["rng_cuda"])
        if ckpt["epoch"] > self.cfg.train.epochs:
            raise CheckpointError(f"{self.run_dir} already finished all {self.cfg.train.epochs} epochs",
                                  "nothing to resume; start a new run to train longer")
        if self.rank == 0:
            update_run_json(self.run_dir, status="running", resumed=now_iso())
        return ckpt

    def _write_run_start(self) -> None:
        cfg, run_dir = self.cfg, self.run_dir
        write_text_atomic(run_dir / "config.resolved.yaml", cfg.to_yaml())
        write_json_atomic(run_dir / "env.json", environment(self.device))
        update_run_json(
            run_dir, status="running", started=now_iso(), seed=cfg.train.seed, config_sha256=cfg.sha256(),
            prepared=str(Path(self.data.prepared_dir).resolve()), split_sha256=self.data.split_sha256,
            cache=str(self.data.cache_path.name), cache_sha256=self.data.cache_sha256,
            init_checkpoint=self.init_info, selection_metric=cfg.train.selection_metric,
            steps_per_epoch=self.steps_per_epoch, world_size=self.world,
            amp=str(self.amp).replace("torch.", "") if self.amp else "none",
            normalization={"mean": float(self.model.mean), "std": float(self.model.std)},
        )

    def _finish(self, status: str, best: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        summary = {
            "status": status, "ended": now_iso(), "best_epoch": best["epoch"], "best_score": best["score"],
            "epochs_done": len(history), "best_val": best.get("val"),
        }
        if self.rank == 0:
            update_run_json(self.run_dir, **summary)
        if self.world > 1 and torch.distributed.is_initialized():
            on_gpu = self.device.type == "cuda"
            torch.distributed.barrier(device_ids=[self.device.index] if on_gpu else None)
        return {**summary, "run_dir": str(self.run_dir)}


def _pixel_bce(probs: np.ndarray, masks: np.ndarray, chunk: int = 32) -> float:
    """Mean pixel BCE of probabilities [N,S,S] vs masks, in chunks (no full-size temporaries)."""
    total, count = 0.0, 0
    for start in range(0, len(probs), chunk):
        p = np.clip(probs[start : start + chunk].astype(np.float32), 1e-6, 1 - 1e-6)
        m = masks[start : start + chunk]
        total += float(-np.where(m, np.log(p), np.log1p(-p)).sum())
        count += p.size
    return total / max(count, 1)


def _read_history(path: Path) -> list[dict[str, Any]]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
