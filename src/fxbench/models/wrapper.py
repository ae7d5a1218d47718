"""The network as fxbench runs it: uint8-scale grey input in, (mask logits, presence) out.

Normalisation and channel replication live inside the module as buffers, so a checkpoint
carries them and inference can never forget or mismatch them (the seed applied none).
"""

from __future__ import annotations

import torch
from torch import nn


class FxNet(nn.Module):
    """Wraps a registry model. Input: float [N,1,H,W] in [0,1]."""

    mean: torch.Tensor  # buffers (scalars), registered in __init__
    std: torch.Tensor

    def __init__(self, net: nn.Module, mean: float, std: float, in_channels: int = 1) -> None:
        super().__init__()
        self.net = net
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    @property
    def has_presence_head(self) -> bool:
        return bool(getattr(self.net, "has_presence_head", False))

    @property
    def segments(self) -> bool:
        return bool(getattr(self.net, "segments", True))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = (x - self.mean) / self.std
        if self.in_channels != 1:
            x = x.expand(-1, self.in_channels, -1, -1)
        return self.net(x)


def normalization_stats(kind: str, dataset_mean: float, dataset_std: float) -> tuple[float, float]:
    """(mean, std) in [0,1] units for config ``data.normalize``."""
    if kind == "none":
        return 0.0, 1.0
    if kind == "imagenet":  # grey equivalent of the ImageNet RGB statistics
        return 0.449, 0.226
    return dataset_mean, dataset_std
