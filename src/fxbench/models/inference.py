"""Batched inference with test-time augmentation: all views of a batch in one forward pass.

TTA modes: ``none``; ``h`` / ``v`` (identity + one flip); ``hv`` (identity, h-flip, v-flip: the
seed's 3-pass mean, no 180-degree view); ``d4`` (the 8 symmetries of the square). Per view the
sigmoid probabilities are mapped back and averaged (probability mean, not logit mean).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from fxbench.evaluate.presence import mean_scores

View = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _flip(dims: tuple[int, ...]) -> View:
    return (lambda t: t.flip(dims)), (lambda t: t.flip(dims))


def _rot(k: int, flip: bool) -> View:
    def fwd(t: torch.Tensor) -> torch.Tensor:
        t = torch.rot90(t, k, (-2, -1))
        return t.flip(-1) if flip else t

    def inv(t: torch.Tensor) -> torch.Tensor:
        t = t.flip(-1) if flip else t
        return torch.rot90(t, -k, (-2, -1))

    return fwd, inv


def tta_views(mode: str) -> list[View]:
    ident: View = ((lambda t: t), (lambda t: t))
    if mode == "none":
        return [ident]
    if mode == "h":
        return [ident, _flip((-1,))]
    if mode == "v":
        return [ident, _flip((-2,))]
    if mode == "hv":
        return [ident, _flip((-1,)), _flip((-2,))]
    if mode == "d4":
        return [_rot(k, f) for f in (False, True) for k in range(4)]
    raise ValueError(f"unknown TTA mode {mode!r}; use none, h, v, hv or d4")


def autocast_ctx(device: torch.device, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


@torch.no_grad()
def predict_tensors(
    model: torch.nn.Module,
    images: torch.Tensor,
    boxes: np.ndarray,
    tta: str = "none",
    batch_size: int = 32,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    topk_frac: float = 0.01,
    channels_last: bool = False,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``model`` over uint8 ``images`` [N,1,S,S].

    Returns probabilities float16 [N,S,S] (the artifact's precision, so training-time validation
    and ``eval`` threshold identical numbers; half the memory of float32) (0 outside each image's letterbox box, since those
    pixels are padding, not anatomy) and presence scores {source: float32 [N]}: ``max``,
    ``topk_mean`` and ``mean`` of the in-box probabilities (definitions:
    :mod:`fxbench.evaluate.presence`), plus ``head`` when the model has a presence head.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    views = tta_views(tta)
    n, _, s, _ = images.shape
    probs = np.zeros((n, s, s), dtype=np.float16)
    pres: dict[str, list[np.ndarray]] = {"max": [], "topk_mean": [], "mean": []}
    head: list[np.ndarray] = []
    box_list = np.asarray(boxes).tolist()
    for start in range(0, n, batch_size):
        x = images[start : start + batch_size].to(device, non_blocking=True).float().div_(255.0)
        b = x.shape[0]
        batch = torch.cat([fwd(x) for fwd, _ in views])
        if channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast_ctx(device, amp_dtype):
            logits, pres_logit = model(batch)
        p = torch.sigmoid(logits.float())
        merged = torch.stack([inv(p[k * b : (k + 1) * b]) for k, (_, inv) in enumerate(views)]).mean(0)
        valid = torch.zeros((b, s, s), dtype=torch.bool)
        for i, (t, left, h, w) in enumerate(box_list[start : start + b]):
            valid[i, t : t + h, left : left + w] = True
        merged = merged[:, 0] * valid.to(device)
        probs[start : start + b] = merged.cpu().numpy()
        flat = merged.flatten(1)
        k = max(1, int(round(flat.shape[1] * topk_frac)))
        pres["max"].append(flat.amax(1).cpu().numpy())
        pres["topk_mean"].append(flat.topk(k, dim=1).values.mean(1).cpu().numpy())
        # From the stored float16 map, so it equals mean_scores() of the saved artifact exactly.
        pres["mean"].append(mean_scores(probs[start : start + b], np.asarray(box_list[start : start + b])))
        if pres_logit is not None:
            hp = torch.sigmoid(pres_logit.float().reshape(len(views), b)).mean(0)
            head.append(hp.cpu().numpy())
    if was_training:
        model.train()
    out = {key: np.concatenate(v).astype(np.float32) for key, v in pres.items()}
    if head:
        out["head"] = np.concatenate(head).astype(np.float32)
    return probs, out
