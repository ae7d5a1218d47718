"""torchvision DeepLabV3 (dilated ResNet-50/101, output stride 8, ASPP head) for one output class.

Differences from the seed, on purpose:

* the first conv takes ``in_channels`` directly (1 = grey); pretrained RGB kernels are summed
  over their input channels, so a grey image gets the response the RGB net gave its grey copy;
* pretrained weights (``model.pretrained``: COCO-with-VOC-labels DeepLabV3, or ``model.weights``:
  a local DeepLabV3 or ResNet state dict) are loaded by us, dropping the auxiliary FCN head and
  the 21-class final conv, so they work without the seed's ``aux_loss`` crash (seed bug 10.1.3);
* the ``_dual`` variants add a presence head on the same 2048-channel stride-8 features
  (global average pool -> Linear(2048, cls_hidden) -> ReLU -> Dropout -> Linear(1)).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fxbench.errors import ConfigError
from fxbench.models.registry import (
    check_weights_file,
    is_network_error,
    offline_error,
    offline_mode,
    read_state_dict,
    require_coverage,
)
from fxbench.models.unet import PresenceHead

if TYPE_CHECKING:
    from fxbench.config import ModelConfig

# The final 1x1 conv of DeepLabHead: its shape depends on the class count, so pretrained
# values for it are meaningless here and are skipped.
_FINAL_CONV_PREFIX = "classifier.4."
_FIRST_CONV_KEY = "backbone.conv1.weight"


class DeepLabV3Seg(nn.Module):
    """DeepLabV3 for binary segmentation with an optional presence head.

    forward: ``x [N, C, H, W] -> (mask_logits [N, 1, H, W], presence_logit [N] or None)``; the
    stride-8 logits are upsampled bilinearly to the input size. State-dict keys match
    torchvision's (``backbone.*``, ``classifier.*``) plus ``presence_head.*``.

    Note: the ASPP image-pooling branch has a BatchNorm on a 1x1 map, so training needs at least
    2 images per device (as in torchvision).
    """

    segments = True

    def __init__(
        self, depth: int, in_channels: int, presence_head: bool, cls_hidden: int, cls_dropout: float
    ) -> None:
        super().__init__()
        from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101

        factory = {50: deeplabv3_resnet50, 101: deeplabv3_resnet101}[depth]
        tv = factory(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)
        self.backbone = tv.backbone
        self.classifier = tv.classifier
        if in_channels != 3:
            old = self.backbone.conv1
            self.backbone.conv1 = nn.Conv2d(
                in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False
            )
        self.has_presence_head = presence_head
        self.presence_head = (
            PresenceHead(2048, cls_hidden, cls_dropout, pool="avg") if presence_head else None
        )
        self.head_prefixes: tuple[str, ...] = ("presence_head.",) if presence_head else ()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features = self.backbone(x)["out"]
        logits = self.classifier(features)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        presence = self.presence_head(features) if self.presence_head is not None else None
        return logits, presence


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Convert first-conv kernels ``[O, C_src, k, k]`` to ``[O, in_channels, k, k]``.

    To one channel: sum over the source channels (grey x replicated 3 times gives the same
    response). From one channel: repeat and divide, which preserves the response likewise.
    """
    src = weight.shape[1]
    if src == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    if src == 1:
        return weight.repeat(1, in_channels, 1, 1) / in_channels
    raise ConfigError(
        f"model.weights: first conv has {src} input channels, cannot adapt to {in_channels}",
        "use weights saved from a 1- or 3-channel model",
    )


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a DeepLabV3 or plain ResNet state dict onto this module's key names."""
    if any(k.startswith("backbone.") for k in sd):
        return {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    if "conv1.weight" in sd and any(k.startswith("layer4.") for k in sd):
        # A classification ResNet (torchvision or timm naming): only its trunk is usable.
        return {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("fc.")}
    return sd


def load_deeplab_state(
    model: DeepLabV3Seg, sd: dict[str, torch.Tensor], source: Path | str, in_channels: int
) -> None:
    """Load pretrained values into ``model``: adapt the first conv, skip the class-specific final
    conv, and refuse files that cover too little of the backbone or have mismatched shapes."""
    sd = _normalise_keys(sd)
    own = model.state_dict()
    if _FIRST_CONV_KEY in sd:
        sd[_FIRST_CONV_KEY] = adapt_first_conv(sd[_FIRST_CONV_KEY], in_channels)
    usable: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key not in own or key.startswith(_FINAL_CONV_PREFIX):
            continue
        if own[key].shape != value.shape:
            raise ConfigError(
                f"model.weights: {source}: tensor {key} has shape {tuple(value.shape)}, "
                f"model expects {tuple(own[key].shape)}",
                f"check that the file is for {model.__class__.__name__} with this depth",
            )
        usable[key] = value
    backbone_keys = [
        k for k in own if k.startswith("backbone.") and not k.endswith("num_batches_tracked")
    ]
    require_coverage(backbone_keys, set(usable), Path(str(source)), "backbone")
    model.load_state_dict(usable, strict=False)


def _download_state(depth: int, model_name: str) -> dict[str, torch.Tensor]:
    """The torchvision COCO-with-VOC-labels DeepLabV3 weights, from the torch hub cache or the web."""
    from torchvision.models.segmentation import (
        DeepLabV3_ResNet50_Weights,
        DeepLabV3_ResNet101_Weights,
    )

    weights: Any = {50: DeepLabV3_ResNet50_Weights, 101: DeepLabV3_ResNet101_Weights}[depth].DEFAULT
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if offline_mode() and not cached.is_file():
        raise offline_error(f"DeepLabV3-ResNet{depth} ({weights.url})", model_name)
    try:
        state: dict[str, torch.Tensor] = torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=False, weights_only=True
        )
    except Exception as err:
        if is_network_error(err):
            raise offline_error(
                f"DeepLabV3-ResNet{depth} ({weights.url})", model_name, err
            ) from err
        raise
    return state


def _build(depth: int, dual: bool) -> Callable[[ModelConfig, int], DeepLabV3Seg]:
    def build(cfg: ModelConfig, in_channels: int) -> DeepLabV3Seg:
        model = DeepLabV3Seg(depth, in_channels, dual, cfg.cls_hidden, cfg.cls_dropout)
        if cfg.weights is not None:
            path = check_weights_file(cfg.weights)
            load_deeplab_state(model, read_state_dict(path), path, in_channels)
        elif cfg.pretrained:
            load_deeplab_state(
                model, _download_state(depth, cfg.name), "torchvision weights", in_channels
            )
        return model

    build.__doc__ = f"``deeplabv3_resnet{depth}{'_dual' if dual else ''}`` builder."
    return build


build_deeplabv3_resnet50 = _build(50, dual=False)
build_deeplabv3_resnet50_dual = _build(50, dual=True)
build_deeplabv3_resnet101 = _build(101, dual=False)
build_deeplabv3_resnet101_dual = _build(101, dual=True)
