"""Model registry: name -> builder, plus the pretrained-weights plumbing shared by the builders.

Builders are imported lazily so that listing models (``fxbench models``, completion, config
validation) does not pay for importing torch, torchvision or timm.

Every built model follows one contract (docs/internals.md, "Models"):

* ``forward(x)`` takes float ``[N, C, H, W]`` and returns ``(mask_logits [N, 1, H, W],
  presence_logit [N] or None)``, the mask logits at the input size;
* attribute ``has_presence_head: bool`` (a presence logit is returned);
* attribute ``segments: bool`` (False for ``classifier``, whose mask logits are only the
  presence logit broadcast over the image, so evaluation can skip segmentation metrics);
* attribute ``head_prefixes: tuple[str, ...]`` (state-dict prefixes of heads a warm start may lack).
"""

from __future__ import annotations

import difflib
import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fxbench.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from fxbench.config import ModelConfig


@dataclass(frozen=True)
class ModelEntry:
    """One registry row: where the builder lives and a one-line description for listings."""

    module: str
    builder: str
    description: str


_REGISTRY: dict[str, ModelEntry] = {
    "unet": ModelEntry(
        "fxbench.models.unet", "build_unet", "The seed's simple U-Net (widths b..8b), random init."
    ),
    "unet_dual": ModelEntry(
        "fxbench.models.unet",
        "build_unet_dual",
        "unet + presence head on the bottleneck (avg pool -> MLP).",
    ),
    "deeplabv3_resnet50": ModelEntry(
        "fxbench.models.deeplab",
        "build_deeplabv3_resnet50",
        "torchvision DeepLabV3, dilated ResNet-50 backbone.",
    ),
    "deeplabv3_resnet50_dual": ModelEntry(
        "fxbench.models.deeplab",
        "build_deeplabv3_resnet50_dual",
        "deeplabv3_resnet50 + presence head on the 2048-ch backbone features.",
    ),
    "deeplabv3_resnet101": ModelEntry(
        "fxbench.models.deeplab",
        "build_deeplabv3_resnet101",
        "torchvision DeepLabV3, dilated ResNet-101 backbone.",
    ),
    "deeplabv3_resnet101_dual": ModelEntry(
        "fxbench.models.deeplab",
        "build_deeplabv3_resnet101_dual",
        "deeplabv3_resnet101 + presence head on the 2048-ch backbone features.",
    ),
    "timm_unet": ModelEntry(
        "fxbench.models.timm_unet",
        "build_timm_unet",
        "U-Net decoder on any timm features_only encoder (model.encoder); optional presence head.",
    ),
    "classifier": ModelEntry(
        "fxbench.models.classifier",
        "build_classifier",
        "timm backbone (model.encoder) predicting presence only; no segmentation.",
    ),
}


#: The seed's model names (seed_spec 2.1, model.name) -> the fxbench registry name. Not
#: accepted as aliases (one name per model); they make the did-you-mean exact.
SEED_MODEL_NAMES = {
    "simple_unet": "unet",
    "simple_unet_dual_head": "unet_dual",
    "simple_unet_dual": "unet_dual",
    "deeplabv3_resnet50_dual_head": "deeplabv3_resnet50_dual",
    "deeplabv3_resnet101_dual_head": "deeplabv3_resnet101_dual",
}
#: Models whose ``model.encoder`` is a timm name.
TIMM_ENCODER_MODELS = ("timm_unet", "classifier")


def list_models() -> list[str]:
    """Registry names, sorted."""
    return sorted(_REGISTRY)


def model_descriptions() -> dict[str, str]:
    """Registry name -> one-line description (for ``fxbench models``)."""
    return {name: _REGISTRY[name].description for name in list_models()}


def suggest_model_name(name: str) -> str:
    """``did you mean 'x'? `` for an unknown model name ('' when nothing is close)."""
    if name in SEED_MODEL_NAMES:
        return f"did you mean '{SEED_MODEL_NAMES[name]}'? (the seed's '{name}' is fxbench's '{SEED_MODEL_NAMES[name]}') "
    close = difflib.get_close_matches(name, list_models(), n=1, cutoff=0.5)
    return f"did you mean '{close[0]}'? " if close else ""


def _unknown_name_error(name: str) -> ConfigError:
    return ConfigError(
        f"model.name: unknown model '{name}'",
        f"{suggest_model_name(name)}valid names: {', '.join(list_models())}",
    )


def check_registry_names(cfg: ModelConfig) -> None:
    """Check ``model.name`` and, for timm-based models, ``model.encoder`` against the registries
    (timm's is local: no network). Raises ``ConfigError`` with a did-you-mean."""
    if cfg.name not in _REGISTRY:
        raise _unknown_name_error(cfg.name)
    if cfg.name in TIMM_ENCODER_MODELS:
        from fxbench.models.timm_unet import _check_timm_name

        _check_timm_name(cfg.encoder)


def build_model(cfg: ModelConfig, in_channels: int) -> nn.Module:
    """Build the registry model ``cfg.name`` for ``in_channels`` input channels (1 or 3).

    Raises ``ConfigError`` for an unknown name or an impossible combination of knobs, and
    ``OfflineError`` when ``cfg.pretrained`` needs a download that cannot happen.
    """
    entry = _REGISTRY.get(cfg.name)
    if entry is None:
        raise _unknown_name_error(cfg.name)
    if in_channels not in (1, 3):
        raise ConfigError(
            f"data.in_channels must be 1 or 3, got {in_channels}", "set data.in_channels=1"
        )
    builder = getattr(importlib.import_module(entry.module), entry.builder)
    model: nn.Module = builder(cfg, in_channels)
    return model


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    seen = 0
    while seen < 8:  # wrappers nest at most a few levels; the bound guards odd user objects
        inner = getattr(model, "_orig_mod", None)
        if inner is None:
            inner = getattr(model, "module", None)
        if inner is None or inner is model:
            break
        model = inner
        seen += 1
    return model


def new_head_prefixes(model: nn.Module) -> tuple[str, ...]:
    """State-dict key prefixes that may be missing when warm-starting ``model``.

    These are the heads a headless source model (e.g. ``unet`` -> ``unet_dual``) lacks, such as
    ``("presence_head.",)``. Prefixes are relative to the bare model: strip ``module.`` /
    ``_orig_mod.`` from keys before matching when the model is wrapped.
    """
    bare = unwrap_model(model)
    return tuple(getattr(bare, "head_prefixes", ()))


# --------------------------------------------------------------------------------------
# pretrained weights: offline detection and local files

_TRUE = {"1", "true", "yes", "on"}


def offline_mode() -> bool:
    """True when the user asked for no network (``HF_HUB_OFFLINE``), read at call time.

    huggingface_hub reads the variable once at import; reading it here as well keeps the check
    right for variables set after import (tests, notebooks).
    """
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment at call time."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
        "huggingface",
    )
    return Path(home).expanduser() / "hub"


def offline_error(what: str, model_name: str, cause: BaseException | None = None) -> Exception:
    """The one-line error for a pretrained download that cannot happen (``cause``: the failure)."""
    from fxbench.errors import OfflineError

    reason = (
        "HF_HUB_OFFLINE is set and it is not cached" if cause is None else "the download failed"
    )
    detail = ""
    if cause is not None:
        first = (str(cause).splitlines() or [""])[0][:120]
        detail = f" ({type(cause).__name__}: {first})"
    return OfflineError(
        f"pretrained weights for {what} (model.name={model_name}) are needed but {reason}{detail}",
        "download the weights file elsewhere and set model.weights: PATH, or set model.pretrained=false",
    )


def is_network_error(err: BaseException) -> bool:
    """Whether ``err`` looks like a failed download (no route, DNS, HTTP, offline mode)."""
    if isinstance(err, (OSError, ConnectionError, TimeoutError)):
        return True
    try:
        import httpx

        if isinstance(err, httpx.HTTPError):
            return True
    except ImportError:
        pass
    return type(err).__module__.startswith(("huggingface_hub", "requests", "urllib3", "httpx"))


def check_weights_file(path: Path | str) -> Path:
    """``path`` as an existing file, else ``ConfigError`` naming ``model.weights``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"model.weights: file not found: {p}",
            "give the path of a .safetensors/.pth/.pt/.bin state dict, or unset model.weights",
        )
    return p


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict from a safetensors or torch file without running pickled code.

    Accepts checkpoints that wrap the weights under ``state_dict``/``model``/``state_dict_ema``
    and strips a DDP ``module.`` prefix.
    """
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any decode failure is the same user error
        raise ConfigError(
            f"model.weights: cannot read {path}: {type(err).__name__}: {str(err).splitlines()[0][:160]}",
            "give a safetensors file or a torch state dict saved with torch.save(model.state_dict())",
        ) from err
    if isinstance(obj, Mapping):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(
            f"model.weights: {path} does not hold a state dict of tensors",
            "save model.state_dict()",
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def require_coverage(
    expected: list[str], provided: set[str], path: Path, target: str, minimum: float = 0.9
) -> None:
    """Refuse a weights file that covers too few of ``expected`` keys.

    Loaders adapt heads and stems non-strictly; without this check a file for another
    architecture would load nothing and leave a silently random encoder (the seed's bug 10.1.7).
    """
    if not expected:
        return
    hits = sum(1 for key in expected if key in provided)
    if hits < minimum * len(expected):
        sample = ", ".join(sorted(set(expected) - provided)[:3])
        raise ConfigError(
            f"model.weights: {path} matches only {hits} of {len(expected)} {target} tensors (missing e.g. {sample})",
            "check that the file was saved from the same architecture as model.encoder / model.name",
        )
