"""Segmentation + presence losses (seed_spec 4.2), configured by ``LossConfig``.

Notation: p = sigmoid(logit) per pixel, y in {0, 1}; per-image sums run over the C*H*W pixels.

* ``bce``: mean pixel BCE-with-logits, ``pos_weight`` on positive pixels.
* ``dice``: per image D_i = (2 sum p*y + eps) / (sum p + sum y + eps), eps = 1e-6; loss = 1 - mean D_i.
* ``focal``: per pixel (1 - p_t)^gamma * BCE(pos_weight), times alpha_t when ``focal_alpha`` is set;
  p_t = p*y + (1-p)(1-y), alpha_t = alpha*y + (1-alpha)(1-y); mean over pixels.
* ``tversky``: per image TI = (TP + eps) / (TP + a*FP + b*FN + eps), loss_i = (1 - TI)^gamma; mean.
* ``presence``: BCE-with-logits of the image logit against ``masks.amax((1,2,3)) > 0``, weighted
  by ``presence_weight_at(epoch)`` (the seed's linear warm-up).

Positive-only averaging (``dice_positive_only``, used by Dice and Tversky) averages over images
whose mask is non-empty. Fix of seed bug 10.10: a batch without a positive image contributes 0
instead of falling back to all images (which pushed every pixel of negative batches to 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fxbench.errors import ConfigError

if TYPE_CHECKING:
    from fxbench.config import LossConfig

EPS = 1e-6


def _per_image_mean(values: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
    """Mean of per-image ``values [N]`` over ``keep [N] bool`` (all when None); 0 when none kept.

    The empty case is a masked sum of zeros rather than a constant, so it stays on the graph
    (DDP expects every rank to produce gradients through the same parameters).
    """
    if keep is None:
        return values.mean()
    return (values * keep).sum() / keep.sum().clamp_min(1)


def _pos_weight(logits: torch.Tensor, pos_weight: float | None) -> torch.Tensor | None:
    """``pos_weight`` as a device scalar, made by a fill (no host-to-device copy, no sync)."""
    if pos_weight is None:
        return None
    return torch.full((), pos_weight, device=logits.device, dtype=logits.dtype)


def bce_loss(logits: torch.Tensor, target: torch.Tensor, pos_weight: float | None) -> torch.Tensor:
    """Mean pixel BCE-with-logits; ``pos_weight`` scales the positive-pixel term."""
    weight = _pos_weight(logits, pos_weight)
    return F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, positive_only: bool) -> torch.Tensor:
    """1 - mean per-image soft Dice. ``logits``, ``target``: ``[N, C, H, W]``."""
    p = torch.sigmoid(logits).flatten(1)
    y = target.flatten(1)
    dice = (2 * (p * y).sum(1) + EPS) / (p.sum(1) + y.sum(1) + EPS)
    keep = y.sum(1) > 0 if positive_only else None
    return _per_image_mean(1 - dice, keep)


def focal_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    gamma: float,
    alpha: float | None,
    pos_weight: float | None,
) -> torch.Tensor:
    """Mean pixel focal BCE (Lin et al.) with the seed's optional pos_weight and alpha balancing."""
    weight = _pos_weight(logits, pos_weight)
    bce = F.binary_cross_entropy_with_logits(logits, target, pos_weight=weight, reduction="none")
    p = torch.sigmoid(logits)
    p_t = p * target + (1 - p) * (1 - target)
    loss = (1 - p_t).pow(gamma) * bce
    if alpha is not None:
        loss = loss * (alpha * target + (1 - alpha) * (1 - target))
    return loss.mean()


def focal_tversky_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float,
    beta: float,
    gamma: float,
    positive_only: bool,
) -> torch.Tensor:
    """Mean per-image (1 - Tversky index)^gamma; alpha weighs false positives, beta false negatives."""
    p = torch.sigmoid(logits).flatten(1)
    y = target.flatten(1)
    tp = (p * y).sum(1)
    fp = (p * (1 - y)).sum(1)
    fn = ((1 - p) * y).sum(1)
    index = (tp + EPS) / (tp + alpha * fp + beta * fn + EPS)
    # Floor the base: d/dx x^gamma is infinite at 0 for gamma < 1, and a perfect image would NaN the step.
    per_image = (1 - index).clamp_min(EPS).pow(gamma)
    keep = y.sum(1) > 0 if positive_only else None
    return _per_image_mean(per_image, keep)


def presence_from_masks(mask_logits: torch.Tensor, source: str, topk_frac: float) -> torch.Tensor:
    """Image logit ``[N]`` from mask logits ``[N, 1, H, W]``: ``max`` or ``topk_mean``.

    topk_mean averages the k = max(1, round(H*W*frac)) largest logits (the seed's k rule).
    """
    flat = mask_logits.flatten(1)
    if source == "max":
        return flat.amax(1)
    k = max(1, min(flat.shape[1], round(flat.shape[1] * topk_frac)))
    return flat.topk(k, dim=1).values.mean(1)


def smooth_labels(target: torch.Tensor, smoothing: float) -> torch.Tensor:
    """The seed classifier's label smoothing: ``target * (1 - s) + 0.5 * s`` (0/1 -> s/2, 1 - s/2)."""
    return target if smoothing <= 0 else target * (1.0 - smoothing) + 0.5 * smoothing


class SegmentationLoss:
    """Weighted sum of the configured pixel losses plus the warmed-up presence BCE.

    ``__call__(mask_logits [N,1,H,W], masks [N,1,H,W] float {0,1}, presence_logit [N] or None,
    epoch (1-based)) -> (loss scalar fp32, parts)``. Everything is computed in fp32 whatever the
    logits' dtype (bf16/fp16 sigmoids and sums lose the small-lesion signal). Logits of another
    spatial size than the masks are resized bilinearly (the seed's rule).
    """

    def __init__(self, cfg: LossConfig) -> None:
        self.cfg = cfg
        seg_total = cfg.bce_weight + cfg.dice_weight + cfg.focal_weight + cfg.tversky_weight
        if seg_total <= 0 and cfg.presence_weight <= 0:
            raise ConfigError(
                "loss: every weight is 0 (bce, dice, focal, tversky, presence), nothing to train",
                "set e.g. loss.bce_weight=0.5 and loss.dice_weight=0.5",
            )

    def presence_weight_at(self, epoch: int) -> float:
        """Presence weight for 1-based ``epoch``: w * min(epoch / W, 1) when W > 0, else w.

        The seed's rule: epoch 1 already gets w / W.
        """
        w = self.cfg.presence_weight
        warm = self.cfg.presence_warmup_epochs
        return w * min(epoch / warm, 1.0) if warm > 0 else w

    def presence_logit(
        self, mask_logits: torch.Tensor, head_logit: torch.Tensor | None
    ) -> torch.Tensor:
        """The image logit the presence loss uses, per ``loss.presence_source``."""
        from fxbench.evaluate.rules import resolve_presence_source

        source: str = self.cfg.presence_source
        if source == "head" and head_logit is None:
            raise ConfigError(
                "loss.presence_source=head but the model has no presence head",
                "set loss.presence_source=auto (or max/topk_mean), or use a model with a head (e.g. unet_dual)",
            )
        source = resolve_presence_source(["head", "max", "topk_mean"] if head_logit is not None else ["max", "topk_mean"],
                                         source)
        if source == "head":
            assert head_logit is not None
            return head_logit.float().reshape(-1)
        return presence_from_masks(mask_logits, source, self.cfg.presence_topk_frac)

    def __call__(
        self,
        mask_logits: torch.Tensor,
        masks: torch.Tensor,
        presence_logit: torch.Tensor | None = None,
        epoch: int = 1,
        *,
        detailed: bool = False,
    ) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """Total loss and its parts.

        ``parts``: each active term (``bce``, ``dice``, ``focal``, ``tversky``, ``presence``)
        unweighted, ``seg`` (weighted pixel sum), ``total`` and ``presence_weight`` (a float).
        By default the terms stay detached 0-d tensors on the loss's device (no host sync: the
        training step never waits for the GPU); ``detailed=True`` reads them back as floats in
        one sync (tests, diagnostics; see ``parts_to_floats``).
        """
        cfg = self.cfg
        logits = mask_logits.float()
        target = masks.float()
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        terms: dict[str, torch.Tensor] = {}
        seg = logits.new_zeros(())
        if cfg.bce_weight > 0:
            terms["bce"] = bce_loss(logits, target, cfg.pos_weight)
            seg = seg + cfg.bce_weight * terms["bce"]
        if cfg.dice_weight > 0:
            terms["dice"] = soft_dice_loss(logits, target, cfg.dice_positive_only)
            seg = seg + cfg.dice_weight * terms["dice"]
        if cfg.focal_weight > 0:
            terms["focal"] = focal_bce_loss(
                logits, target, cfg.focal_gamma, cfg.focal_alpha, cfg.pos_weight
            )
            seg = seg + cfg.focal_weight * terms["focal"]
        if cfg.tversky_weight > 0:
            terms["tversky"] = focal_tversky_loss(
                logits,
                target,
                cfg.tversky_alpha,
                cfg.tversky_beta,
                cfg.tversky_gamma,
                cfg.dice_positive_only,
            )
            seg = seg + cfg.tversky_weight * terms["tversky"]
        total = seg
        weight = self.presence_weight_at(epoch)
        if weight > 0:
            image_logit = self.presence_logit(logits, presence_logit)
            image_target = smooth_labels((target.amax(dim=(1, 2, 3)) > 0).float(), cfg.presence_label_smoothing)
            terms["presence"] = F.binary_cross_entropy_with_logits(image_logit, image_target)
            total = total + weight * terms["presence"]
        parts: dict[str, float | torch.Tensor] = {
            name: v.detach() for name, v in {**terms, "seg": seg, "total": total}.items()
        }
        parts["presence_weight"] = float(weight)
        return total, parts_to_floats(parts) if detailed else parts


def parts_to_floats(parts: dict[str, float | torch.Tensor]) -> dict[str, float | torch.Tensor]:
    """The loss parts as floats, read back from the device in one sync."""
    names = [k for k, v in parts.items() if isinstance(v, torch.Tensor)]
    values = torch.stack([parts[k] for k in names]).cpu().tolist() if names else []  # type: ignore[misc]
    return {**parts, **{k: float(v) for k, v in zip(names, values, strict=True)}}
