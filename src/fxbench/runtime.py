"""Runtime set-up shared by training, inference and the bench: device, AMP, seeding, distributed.

No stage owns these: ``train`` and ``predict`` both pick a device and an autocast dtype the same
way, so the rule lives here and inference does not depend on the trainer. torch is imported
inside the functions that need it, so ``dist_info`` stays cheap for the CLI.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from fxbench.errors import ConfigError

if TYPE_CHECKING:
    import torch


def pick_device(kind: str) -> torch.device:
    """``runtime.device`` (auto|cpu|cuda|cuda:N|mps) -> a torch device; cuda without CUDA is a ConfigError."""
    import torch

    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device=cuda but CUDA is not available", "use runtime.device=auto or cpu")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(kind)


def pick_amp(kind: str, device: torch.device) -> torch.dtype | None:
    """``runtime.amp`` (auto|none|fp16|bf16) -> the autocast dtype on ``device``, or None for fp32."""
    import torch

    if kind == "none" or (kind == "auto" and device.type != "cuda"):
        return None
    if kind == "fp16":
        return torch.float16
    if kind == "bf16" or (kind == "auto" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global RNG and torch's global RNG from one integer."""
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def dist_info() -> tuple[int, int]:
    """(rank, world) from torchrun's environment; (0, 1) when not distributed."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
