"""fxbench.models: the model registry (name -> builder).

``build_model(cfg, in_channels)`` returns an ``nn.Module`` whose forward maps float
``[N, C, H, W]`` to ``(mask_logits [N, 1, H, W], presence_logit [N] or None)``; see
``fxbench.models.registry`` for the attributes every model carries. Importing this package does
not import torch.
"""

from fxbench.models.registry import (
    build_model,
    list_models,
    model_descriptions,
    new_head_prefixes,
    unwrap_model,
)

__all__ = ["build_model", "list_models", "model_descriptions", "new_head_prefixes", "unwrap_model"]
