"""``timm_unet``: a U-Net decoder on any timm ``features_only`` encoder, and the timm
construction helper (name check, pretrained download, local weights file) shared with
``classifier``.

The decoder is planned from the encoder's reductions, so encoders whose first feature is at
stride 2 (ResNet, EfficientNet) and at stride 4 (ConvNeXt) both work: each decoder stage doubles
the resolution and concatenates the encoder feature of that stride when there is one; stages
below the finest feature run without a skip, and the logits are resized to the input size at
the end if the decoder stops short of full resolution.
"""

from __future__ import annotations

import difflib
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fxbench.errors import ConfigError
from fxbench.models.registry import (
    check_weights_file,
    hf_cache_dir,
    is_network_error,
    offline_error,
    offline_mode,
    read_state_dict,
    require_coverage,
)
from fxbench.models.unet import ConvBlock, PresenceHead

if TYPE_CHECKING:
    from fxbench.config import ModelConfig


# --------------------------------------------------------------------------------------
# timm construction


def _check_timm_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(
        f"model.encoder: unknown timm model '{name}'",
        f"{hint}list names with python -c \"import timm; print(timm.list_models('*resnet*'))\"",
    )


def _cached_pretrained_file(name: str) -> Path | None:
    """The locally cached pretrained file timm would download for ``name``, if any."""
    from timm.models import get_pretrained_cfg

    pcfg = get_pretrained_cfg(name)
    if pcfg is None:
        return None
    if pcfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = pcfg.hf_hub_id.partition("@")
        names = (
            [pcfg.hf_hub_filename]
            if pcfg.hf_hub_filename
            else ["model.safetensors", "pytorch_model.bin"]
        )
        for filename in names:
            hit = try_to_load_from_cache(
                repo, filename, cache_dir=hf_cache_dir(), revision=revision or None
            )
            if isinstance(hit, str) and os.path.isfile(hit):
                return Path(hit)
    if isinstance(pcfg.url, str) and pcfg.url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(pcfg.url)
        if cached.is_file():
            return cached
    return None


def _normalise_key(key: str) -> str:
    # features_only wrappers flatten module paths ("stages.0" -> "stages_0"); compare both forms alike.
    return key.replace("_", ".")


def _check_file_covers(model: nn.Module, path: Path) -> None:
    provided = {_normalise_key(k) for k in read_state_dict(path)}
    expected = [_normalise_key(k) for k, _ in model.named_parameters()]
    require_coverage(expected, provided, path, "encoder")


def create_timm_model(cfg: ModelConfig, in_channels: int, **kwargs: Any) -> nn.Module:
    """``timm.create_model(cfg.encoder, in_chans=in_channels, **kwargs)`` with fxbench's weight rules.

    ``cfg.weights`` (a local file) wins over ``cfg.pretrained``; timm adapts the first conv to
    ``in_channels`` and drops a mismatched classifier. ``cfg.pretrained`` uses the Hugging Face /
    torch hub cache when offline and downloads otherwise; no way to get the weights ->
    ``OfflineError`` naming ``model.weights``. A file for another architecture -> ``ConfigError``.
    """
    import timm

    _check_timm_name(cfg.encoder)
    file: Path | None = None
    if cfg.weights is not None:
        file = check_weights_file(cfg.weights)
    elif cfg.pretrained and offline_mode():
        file = _cached_pretrained_file(cfg.encoder)
        if file is None:
            raise offline_error(f"timm encoder '{cfg.encoder}'", cfg.name)
    try:
        if file is not None:
            model = timm.create_model(
                cfg.encoder,
                pretrained=True,
                pretrained_cfg_overlay={"file": str(file)},
                in_chans=in_channels,
                **kwargs,
            )
        else:
            model = timm.create_model(
                cfg.encoder, pretrained=cfg.pretrained, in_chans=in_channels, **kwargs
            )
    except ConfigError:
        raise
    except Exception as err:
        if file is None and cfg.pretrained and is_network_error(err):
            raise offline_error(f"timm encoder '{cfg.encoder}'", cfg.name, err) from err
        # torch puts the useful part of a load error ("size mismatch for ...") on the second line.
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        first = " ".join(lines[:2])[:240]
        where = f"weights file {file}" if file is not None else f"model.encoder={cfg.encoder}"
        raise ConfigError(
            f"cannot build timm model '{cfg.encoder}' ({where}): {type(err).__name__}: {first}",
            "check model.encoder and that model.weights was saved from that architecture",
        ) from err
    if file is not None and cfg.weights is not None:
        _check_file_covers(model, file)
    return model


# --------------------------------------------------------------------------------------
# the U-Net


class DecoderStage(nn.Module):
    """Upsample x2 (to the skip's size when there is one), concatenate the skip, ConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = ConvBlock(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = torch.cat([x, skip], dim=1)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        out: torch.Tensor = self.conv(x)
        return out


def plan_skips(reductions: list[int], n_stages: int) -> list[int | None]:
    """For each decoder stage, the index of the encoder feature to concatenate (or None).

    Stage i outputs stride ``R / 2**(i+1)`` where R is the deepest stride; the skip is the last
    (deepest) feature with exactly that stride.
    """
    deepest = reductions[-1]
    plan: list[int | None] = []
    for i in range(n_stages):
        stride = deepest / 2 ** (i + 1)
        matches = [j for j, r in enumerate(reductions[:-1]) if r == stride]
        plan.append(matches[-1] if matches else None)
    return plan


class TimmUNet(nn.Module):
    """U-Net on a timm ``features_only`` encoder.

    forward: ``x [N, C, H, W] -> (mask_logits [N, 1, H, W], presence_logit [N] or None)``.
    The presence head reads the deepest feature with average+max pooling.
    """

    segments = True

    def __init__(
        self,
        encoder: nn.Module,
        decoder_channels: list[int],
        presence_head: bool,
        cls_hidden: int,
        cls_dropout: float,
    ) -> None:
        super().__init__()
        info: Any = encoder.feature_info
        channels: list[int] = list(info.channels())
        reductions: list[int] = list(info.reduction())
        self.encoder = encoder
        self.skip_plan = plan_skips(reductions, len(decoder_channels))
        stages = []
        width = channels[-1]
        for out_ch, skip in zip(decoder_channels, self.skip_plan, strict=True):
            stages.append(DecoderStage(width, channels[skip] if skip is not None else 0, out_ch))
            width = out_ch
        self.decoder = nn.ModuleList(stages)
        self.head = nn.Conv2d(width, 1, kernel_size=1)
        self.has_presence_head = presence_head
        self.presence_head = (
            PresenceHead(channels[-1], cls_hidden, cls_dropout, pool="avgmax")
            if presence_head
            else None
        )
        self.head_prefixes: tuple[str, ...] = ("presence_head.",) if presence_head else ()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        features: list[torch.Tensor] = self.encoder(x)
        y = features[-1]
        for stage, skip in zip(self.decoder, self.skip_plan, strict=True):
            y = stage(y, features[skip] if skip is not None else None)
        logits = self.head(y)
        if logits.shape[-2:] != x.shape[-2:]:
            logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
        presence = self.presence_head(features[-1]) if self.presence_head is not None else None
        return logits, presence


def build_timm_unet(cfg: ModelConfig, in_channels: int) -> TimmUNet:
    """``timm_unet``: encoder ``cfg.encoder``, decoder widths ``cfg.decoder_channels`` (deepest
    first), presence head when ``cfg.presence_head``."""
    if not cfg.decoder_channels:
        raise ConfigError(
            "model.decoder_channels is empty",
            "give at least one width, e.g. [256, 128, 64, 32, 16]",
        )
    encoder = create_timm_model(cfg, in_channels, features_only=True)
    deepest = int(encoder.feature_info.reduction()[-1])  # type: ignore[union-attr, operator]
    max_stages = int(math.log2(deepest))
    if len(cfg.decoder_channels) > max_stages:
        raise ConfigError(
            f"model.decoder_channels has {len(cfg.decoder_channels)} stages but encoder '{cfg.encoder}' "
            f"reduces by {deepest} (at most {max_stages} stages)",
            f"use {max_stages} widths, e.g. {cfg.decoder_channels[:max_stages]}",
        )
    return TimmUNet(
        encoder, list(cfg.decoder_channels), cfg.presence_head, cfg.cls_hidden, cfg.cls_dropout
    )
