"""``classifier``: a timm backbone predicting fracture presence only (the seed's standalone
presence classifier, section 3.6).

The model contract requires mask logits ``[N, 1, H, W]`` from every model. A classifier has no
pixel output, so it returns its presence logit broadcast over the image (an ``expand`` view, no
memory): the max-pixel and top-k presence scores then equal the head's, and every consumer that
reads mask logits keeps working. ``segments = False`` tells evaluation and reports to skip
segmentation metrics for it, and a training config for it should set the pixel loss weights to
0 and ``loss.presence_weight`` > 0.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from fxbench.models.timm_unet import create_timm_model

if TYPE_CHECKING:
    from fxbench.config import ModelConfig


class PresenceClassifier(nn.Module):
    """forward: ``x [N, C, H, W] -> (presence logit broadcast to [N, 1, H, W], presence_logit [N])``."""

    segments = False
    has_presence_head = True
    # The whole network is the head: a warm start from a segmentation model is not meaningful.
    head_prefixes: tuple[str, ...] = ()

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        presence = self.backbone(x).reshape(x.shape[0])
        mask_logits = presence.view(-1, 1, 1, 1).expand(-1, 1, x.shape[-2], x.shape[-1])
        return mask_logits, presence


def build_classifier(cfg: ModelConfig, in_channels: int) -> PresenceClassifier:
    """``classifier``: ``cfg.encoder`` with a 1-logit head; ``cfg.cls_dropout`` before the head."""
    return PresenceClassifier(
        create_timm_model(cfg, in_channels, num_classes=1, drop_rate=cfg.cls_dropout)
    )
