"""The seed's SimpleUNet (``unet``) and its dual-head variant (``unet_dual``), plus the shared
presence head used by every segmentation model with an image-level output."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fxbench.errors import ConfigError

if TYPE_CHECKING:
    from fxbench.config import ModelConfig


class PresenceHead(nn.Module):
    """Image-level fracture logit from a feature map.

    ``[N, C, h, w] -> [N]``: global pooling (``avg``, or ``avgmax`` = concatenated average and max,
    which keeps a small bright lesion visible after pooling) -> Linear -> ReLU -> Dropout -> Linear(1).
    """

    def __init__(self, in_channels: int, hidden: int, dropout: float, pool: str = "avg") -> None:
        super().__init__()
        if pool not in ("avg", "avgmax"):
            raise ValueError(f"pool must be 'avg' or 'avgmax', got {pool!r}")
        self.pool = pool
        width = in_channels * (2 if pool == "avgmax" else 1)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # Pool in fp32: a max/mean over many bf16 pixels loses the small differences the head needs.
        f = features.float()
        pooled = f.mean(dim=(2, 3))
        if self.pool == "avgmax":
            pooled = torch.cat([pooled, f.amax(dim=(2, 3))], dim=1)
        out: torch.Tensor = self.mlp(pooled.to(features.dtype)).squeeze(1)
        return out


class ConvBlock(nn.Sequential):
    """Two rounds of conv3x3 (no bias: BatchNorm follows) -> BatchNorm -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Transposed conv x2 (halving channels), concatenation with the skip, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, in_channels // 2, kernel_size=2, stride=2)
        self.conv = ConvBlock(in_channels // 2 + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:
            # Input sides not divisible by 8 leave the upsampled map a pixel short.
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        out: torch.Tensor = self.conv(torch.cat([x, skip], dim=1))
        return out


class SimpleUNet(nn.Module):
    """The seed's U-Net: 3 encoder levels (b, 2b, 4b) with max-pool, bottleneck 8b at 1/8, a
    transposed-conv decoder with skips and a 1x1 output conv. Optional presence head on the
    bottleneck (the seed's ``simple_unet_dual_head``).

    forward: ``x [N, C, H, W] -> (mask_logits [N, 1, H, W], presence_logit [N] or None)``.
    """

    segments = True

    def __init__(
        self,
        in_channels: int,
        base_channels: int = 32,
        presence_head: bool = False,
        cls_hidden: int = 128,
        cls_dropout: float = 0.2,
    ) -> None:
        super().__init__()
        b = base_channels
        self.enc1 = ConvBlock(in_channels, b)
        self.enc2 = ConvBlock(b, 2 * b)
        self.enc3 = ConvBlock(2 * b, 4 * b)
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = ConvBlock(4 * b, 8 * b)
        self.up3 = UpBlock(8 * b, 4 * b, 4 * b)
        self.up2 = UpBlock(4 * b, 2 * b, 2 * b)
        self.up1 = UpBlock(2 * b, b, b)
        self.head = nn.Conv2d(b, 1, kernel_size=1)
        self.has_presence_head = presence_head
        self.presence_head = (
            PresenceHead(8 * b, cls_hidden, cls_dropout, pool="avg") if presence_head else None
        )
        self.head_prefixes: tuple[str, ...] = ("presence_head.",) if presence_head else ()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        s3 = self.enc3(self.pool(s2))
        z = self.bottleneck(self.pool(s3))
        y = self.up1(self.up2(self.up3(z, s3), s2), s1)
        presence = self.presence_head(z) if self.presence_head is not None else None
        return self.head(y), presence


def _refuse_pretrained(cfg: ModelConfig) -> None:
    if cfg.pretrained or cfg.weights is not None:
        raise ConfigError(
            f"model.name={cfg.name} has no pretrained weights (it always starts from random init)",
            "set model.pretrained=false and unset model.weights, or use timm_unet with model.encoder",
        )


def build_unet(cfg: ModelConfig, in_channels: int) -> SimpleUNet:
    """``unet``: the seed's SimpleUNet, ``cfg.base_channels`` wide."""
    _refuse_pretrained(cfg)
    return SimpleUNet(in_channels, cfg.base_channels, presence_head=False)


def build_unet_dual(cfg: ModelConfig, in_channels: int) -> SimpleUNet:
    """``unet_dual``: SimpleUNet + presence head (GAP -> Linear(8b, cls_hidden) -> ReLU -> Dropout -> Linear(1))."""
    _refuse_pretrained(cfg)
    return SimpleUNet(in_channels, cfg.base_channels, True, cfg.cls_hidden, cfg.cls_dropout)
