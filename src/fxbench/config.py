"""The configuration schema: the single source of truth for every knob.

A config is YAML with twelve sections (data, model, loss, sampler, augment, optim, schedule,
train, eval, select, runtime, launcher). Every model forbids unknown keys; a typo gets a did-you-mean.

Precedence, highest first:  ``--set section.key=value``  >  environment
``FXBENCH_SECTION__KEY=value``  >  the ``--config`` file  >  the defaults below.

Override values are parsed as YAML scalars (``yaml.safe_load``: never ``eval``) and then
validated and typed by pydantic, so ``--set optim.lr=1e-3`` gives a float.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fxbench.errors import ConfigError

ENV_PREFIX = "FXBENCH_"

#: Metric names a run may select its best checkpoint by (computed by fxbench.evaluate).
SELECTION_METRICS = (
    "dice_pos",
    "iou_pos",
    "dice",
    "iou",
    "roc_auc_presence",
    "average_precision_presence",
    "auc_plus_dice_pos",
    "neg_loss",
)


class _Section(BaseModel):
    # allow_inf_nan=False: `--set optim.lr=inf` or `.nan` is a config error, not a NaN loss later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class DataConfig(_Section):
    """Where the prepared data is and how it is fed to the network."""

    prepared: Path | None = Field(
        None, description="Prepared folder (output of `fxbench prepare`). Default: <data home>/prepared/fracatlas."
    )
    image_size: int = Field(256, ge=32, le=2048, description="Network input edge in pixels (a square; see resize).")
    resize: Literal["letterbox", "stretch"] = Field(
        "letterbox",
        description="Native image -> square: letterbox (aspect kept, zero padding) or stretch (both axes to the size, the seed's default). Reads the prepared cache of that geometry.",
    )
    cache_size: int | None = Field(
        None, description="Which prepared cache to read; default: the smallest cache >= image_size of the resize geometry."
    )
    normalize: Literal["none", "dataset", "imagenet"] = Field(
        "dataset",
        description="Input intensity normalisation: none = raw [0,1] (the seed), dataset = train mean/std, imagenet = ImageNet grey mean/std.",
    )
    in_channels: Literal[1, 3] = Field(1, description="1 = grey (native); 3 = grey replicated (seed compatibility).")
    split: Literal["prepared"] = Field("prepared", description="Use the split written by `prepare`.")
    fold: int | None = Field(
        None, ge=0,
        description="Cross-validation fold k (needs `prepare --folds K`): test = fold k, val = an inner part of the other folds, train = the rest. None = the manifest's split.",
    )

    @field_validator("image_size")
    @classmethod
    def _divisible(cls, v: int) -> int:
        if v % 32:
            raise ValueError(f"image_size must be a multiple of 32 (got {v}); try {max(32, round(v / 32) * 32)}")
        return v


class ModelConfig(_Section):
    name: str = Field("unet_dual", description="Registry name; `fxbench models` lists them.")
    base_channels: int = Field(32, ge=4, le=256, description="U-Net width (unet, unet_dual).")
    encoder: str = Field("resnet34", description="timm encoder name (timm_unet, classifier).")
    decoder_channels: list[int] = Field(
        default_factory=lambda: [256, 128, 64, 32, 16], description="timm_unet decoder widths, deepest first."
    )
    presence_head: bool = Field(True, description="timm_unet: add an image-level presence head.")
    cls_hidden: int = Field(128, ge=1, description="Presence head hidden width.")
    cls_dropout: float = Field(0.2, ge=0.0, lt=1.0, description="Presence head dropout.")
    pretrained: bool = Field(False, description="Download pretrained encoder weights (needs network).")
    weights: Path | None = Field(None, description="Local pretrained encoder weights (timm file overlay); works offline.")

    @field_validator("name")
    @classmethod
    def _registered(cls, v: str) -> str:
        # The registry module imports no torch; builders stay lazy.
        from fxbench.models.registry import list_models, suggest_model_name

        if v not in list_models():
            raise ValueError(f"unknown model '{v}'; {suggest_model_name(v)}valid: {', '.join(list_models())}")
        return v


class LossConfig(_Section):
    bce_weight: float = Field(0.5, ge=0.0, description="Pixel BCE weight.")
    dice_weight: float = Field(0.5, ge=0.0, description="Soft Dice weight.")
    dice_positive_only: bool = Field(True, description="Average Dice only over images with a non-empty mask.")
    pos_weight: float | None = Field(None, gt=0.0, description="BCE positive-pixel weight.")
    focal_weight: float = Field(0.0, ge=0.0, description="Focal BCE weight.")
    focal_gamma: float = Field(2.0, ge=0.0)
    focal_alpha: float | None = Field(None, ge=0.0, le=1.0)
    tversky_weight: float = Field(0.0, ge=0.0, description="Focal Tversky weight.")
    tversky_alpha: float = Field(0.3, ge=0.0, description="Tversky false-positive weight.")
    tversky_beta: float = Field(0.7, ge=0.0, description="Tversky false-negative weight.")
    tversky_gamma: float = Field(1.0, gt=0.0)
    presence_weight: float = Field(0.0, ge=0.0, description="Image-level presence BCE weight.")
    presence_warmup_epochs: int = Field(0, ge=0, description="Linear ramp of presence_weight over epochs (seed rule).")
    presence_source: Literal["auto", "head", "max", "topk_mean"] = Field(
        "auto", description="Presence logit for the loss: head, or max / top-k mean of mask logits; auto = head if present."
    )
    presence_topk_frac: float = Field(0.01, gt=0.0, le=1.0)
    presence_label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="Presence BCE target = y(1-s) + s/2 (the seed's classifier used 0.02)."
    )


class PatchConfig(_Section):
    enabled: bool = Field(False, description="Train on patches cut at the evaluation scale (fixes the seed's scale bug).")
    size: int = Field(128, ge=32, description="Patch edge in network pixels (<= image_size).")
    positive_prob: float = Field(0.7, ge=0.0, le=1.0, description="P(centre on a fracture pixel) for positive images.")
    hard_negative_prob: float = Field(0.6, ge=0.0, le=1.0, description="P(centre on a high-gradient non-fracture pixel).")
    hard_negative_quantile: float = Field(0.9, ge=0.0, le=1.0)


class SamplerConfig(_Section):
    balanced: bool = Field(True, description="Draw positives with probability positive_fraction (with replacement).")
    positive_fraction: float = Field(0.5, gt=0.0, lt=1.0)
    epoch_size: int | None = Field(None, ge=1, description="Samples per epoch; default = train split size.")
    patch: PatchConfig = Field(default_factory=PatchConfig)
    hard_negative_mining: bool = Field(False, description="Each epoch, oversample negatives the model scored highest.")
    mining_fraction: float = Field(0.25, ge=0.0, le=1.0, description="Share of negative draws taken from mined hard negatives.")


class AugmentConfig(_Section):
    """Batched tensor augmentations (run on the training device). A probability of 0 disables one."""

    enabled: bool = True
    hflip_prob: float = Field(0.5, ge=0.0, le=1.0)
    vflip_prob: float = Field(0.5, ge=0.0, le=1.0)
    rotate_prob: float = Field(0.3, ge=0.0, le=1.0)
    rotate_degrees: float = Field(12.0, ge=0.0, le=180.0)
    affine_prob: float = Field(0.0, ge=0.0, le=1.0)
    affine_degrees: float = Field(10.0, ge=0.0, le=180.0)
    affine_translate: float = Field(0.06, ge=0.0, le=0.5)
    affine_scale_min: float = Field(0.9, gt=0.0)
    affine_scale_max: float = Field(1.1, gt=0.0)
    brightness_prob: float = Field(0.0, ge=0.0, le=1.0)
    brightness: float = Field(0.2, ge=0.0, le=1.0)
    contrast_prob: float = Field(0.0, ge=0.0, le=1.0)
    contrast: float = Field(0.2, ge=0.0, le=1.0)
    gamma_prob: float = Field(0.0, ge=0.0, le=1.0)
    gamma_min: float = Field(0.8, ge=0.05)
    gamma_max: float = Field(1.2, ge=0.05)
    autocontrast_prob: float = Field(0.0, ge=0.0, le=1.0)
    blur_prob: float = Field(0.0, ge=0.0, le=1.0)
    blur_sigma_min: float = Field(0.1, gt=0.0)
    blur_sigma_max: float = Field(1.5, gt=0.0)
    blur_kernel: int | None = Field(
        None, ge=3, le=63, description="Gaussian blur kernel edge in pixels (odd; the seed's 5). None = 2*ceil(3*blur_sigma_max)+1."
    )
    sharpen_prob: float = Field(0.0, ge=0.0, le=1.0)
    sharpen_amount: float = Field(0.5, ge=0.0, le=3.0)
    local_contrast_prob: float = Field(0.0, ge=0.0, le=1.0, description="Unsharp mask with a wide kernel (CLAHE-like).")
    noise_prob: float = Field(0.0, ge=0.0, le=1.0)
    noise_std_min: float = Field(0.0, ge=0.0)
    noise_std_max: float = Field(0.05, ge=0.0)
    cutout_prob: float = Field(0.0, ge=0.0, le=1.0, description="Erase a box; never over a fracture (fixes the seed).")
    cutout_frac_min: float = Field(0.08, gt=0.0, le=1.0)
    cutout_frac_max: float = Field(0.2, gt=0.0, le=1.0)
    positive_multiplier: float = Field(1.0, ge=0.0, description="Multiplies the non-flip probabilities for fractured images.")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentConfig:
        for lo, hi in [
            ("affine_scale_min", "affine_scale_max"),
            ("gamma_min", "gamma_max"),
            ("blur_sigma_min", "blur_sigma_max"),
            ("noise_std_min", "noise_std_max"),
            ("cutout_frac_min", "cutout_frac_max"),
        ]:
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo} must be <= {hi}")
        if self.blur_kernel is not None and self.blur_kernel % 2 == 0:
            raise ValueError(f"blur_kernel must be odd (got {self.blur_kernel}); try {self.blur_kernel + 1}")
        return self


class OptimConfig(_Section):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(3e-4, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    grad_clip_norm: float = Field(0.0, ge=0.0, description="0 = off.")
    no_decay_norm_bias: bool = Field(True, description="No weight decay on norms and biases (the seed decayed them).")


class ScheduleConfig(_Section):
    name: Literal["none", "cosine", "onecycle", "poly"] = "none"
    warmup_epochs: float = Field(0.0, ge=0.0, description="Linear warm-up length (epochs, fractions allowed).")
    min_lr: float = Field(1e-6, ge=0.0)
    max_lr: float | None = Field(None, gt=0.0, description="onecycle peak; default optim.lr.")
    pct_start: float = Field(0.15, gt=0.0, lt=1.0)
    div_factor: float = Field(10.0, gt=0.0)
    final_div_factor: float = Field(1000.0, gt=0.0)
    poly_power: float = Field(0.9, gt=0.0)


class EmaConfig(_Section):
    enabled: bool = False
    decay: float = Field(0.999, ge=0.0, lt=1.0)
    warmup_steps: int = Field(0, ge=0, description="Copy (decay 0) for the first N updates.")


class TrainConfig(_Section):
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(4, ge=1)
    eval_batch_size: int = Field(32, ge=1)
    seed: int = 42
    selection_metric: str = Field("dice_pos", description="Val metric that picks checkpoints/best.pt.")
    val_every_epochs: int = Field(1, ge=1, description="Validate (and maybe save best.pt) every N epochs and after the last.")
    last_every_epochs: int = Field(5, ge=1, description="Write checkpoints/last.pt every N epochs, after the last and on SIGINT/SIGTERM.")
    log_every_steps: int = Field(50, ge=1, description="Read the loss back from the device (progress, finiteness check) every N steps and at epoch end; steps in between never wait for the GPU.")
    max_steps_per_epoch: int | None = Field(None, ge=1, description="Cap optimizer steps per epoch (smoke runs only).")
    early_stopping_patience: int | None = Field(None, ge=1, description="Stop after N validations without improvement.")
    init_checkpoint: Path | None = Field(None, description="Warm start: weights loaded strictly except declared new heads.")
    ema: EmaConfig = Field(default_factory=EmaConfig)

    @field_validator("selection_metric")
    @classmethod
    def _known_metric(cls, v: str) -> str:
        if v not in SELECTION_METRICS:
            close = difflib.get_close_matches(v, SELECTION_METRICS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown selection metric '{v}'{hint} Valid: {', '.join(SELECTION_METRICS)}")
        return v


class EvalConfig(_Section):
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Pixel probability threshold (prob >= t).")
    tta: Literal["none", "h", "v", "hv", "d4"] = Field("none", description="hv = identity + hflip + vflip (the seed's); d4 adds rotations.")
    presence_source: Literal["auto", "head", "max", "topk_mean", "mean", "pred_area"] = Field(
        "auto",
        description="Presence score: head, max / topk_mean / mean pixel probability, or pred_area (share of pixels >= threshold); auto = head if present, else max.",
    )
    presence_topk_frac: float = Field(0.01, gt=0.0, le=1.0)
    presence_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    min_component: int = Field(0, ge=0, description="Drop predicted components smaller than this many pixels.")
    bootstrap: int = Field(2000, ge=0, description="Stratified bootstrap resamples for CIs (0 = off).")
    bootstrap_seed: int = 0
    resolution: Literal["cache", "native"] = Field("cache", description="Score at cache resolution (seed) or native size.")
    boxes: bool = Field(True, description="Also score boxes (COCO AP, FROC) from the components at native size, when PREP/boxes.json exists.")
    box_bootstrap: int | None = Field(None, ge=0, description="Bootstrap resamples for the box CIs (None = eval.bootstrap; never more). Each costs one pycocotools accumulate, about 6 ms per 1,000 predicted boxes.")
    box_score: Literal["max", "mean"] = Field("max", description="Score of a predicted box: max or mean probability of its component (tune chooses on val; this is the default without a decision).")


class RuntimeConfig(_Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    amp: Literal["auto", "bf16", "fp16", "none"] = Field("auto", description="auto = bf16 on CUDA if supported, else none.")
    channels_last: bool = True
    compile: bool = False
    compile_backend: Literal["inductor", "aot_eager", "eager"] = Field(
        "inductor", description="torch.compile backend; eager/aot_eager only trace (CPU emulation of the GPU run)."
    )
    cudnn_benchmark: bool = True
    deterministic: bool = Field(False, description="torch deterministic algorithms (slower on CUDA).")
    num_threads: int | None = Field(None, ge=1)


class SelectConfig(_Section):
    """The val-side searches of ``tune``, ``ensemble`` and ``blend`` (their grids and rules).
    Not part of the config hash: they choose from saved predictions after training. Bootstrap
    settings for the metrics they report are ``eval.bootstrap`` and ``eval.bootstrap_seed``."""

    metric: str = Field(
        "dice_pos", description="Selection metric for the pixel threshold (tune, ensemble): dice_pos, iou_pos, dice, iou or auc_plus_dice_pos."
    )
    presence_rule: Literal["f1", "youden"] = Field("f1", description="Presence threshold rule on val.")
    threshold_start: float = Field(0.05, ge=0.0, le=1.0, description="Pixel threshold grid start.")
    threshold_stop: float = Field(0.95, ge=0.0, le=1.0, description="Pixel threshold grid stop (inclusive).")
    threshold_step: float = Field(0.05, gt=0.0, description="Pixel threshold grid step.")
    min_components: list[int] = Field(default_factory=lambda: [0], description="Min component sizes (pixels) to try.")
    blend_rule: Literal["best_auc", "best_dice_pos", "best_joint"] = Field(
        "best_joint", description="blend: what the (alpha, beta, gamma) search maximises (best_joint = AUC + dice_pos)."
    )
    alpha_step: float = Field(0.1, gt=0.0, description="blend: mask weight grid step over [0, 1].")
    beta_step: float = Field(0.1, gt=0.0, description="blend: presence weight grid step over [0, 1].")
    gamma_step: float = Field(0.05, gt=0.0, description="blend: classifier fusion grid step over [0, 1].")
    presence_a: str = Field("auto", description="blend: run A's presence source (auto = head, else max).")
    presence_b: str = Field("max", description="blend: run B's presence source (the seed: max).")
    presence_classifier: str = Field("auto", description="blend: the classifier's presence source.")


class LauncherConfig(_Section):
    """Where a sweep's jobs run (``fxbench train --seeds``). Not part of the config hash: where a
    job runs does not change what it computes, so a requeued or relaunched run still resumes."""

    name: Literal["local", "slurm"] = Field("local", description="local = this machine; slurm = a job array via submitit (`fxbench[slurm]`).")
    jobs: int | None = Field(
        None, ge=1,
        description="Jobs at once. local: default 1 (sequential); CUDA: one job per visible GPU; CPU: cores split per job. slurm: array parallelism, default all.",
    )
    partition: str | None = Field(None, description="slurm: partition (sbatch --partition); default the cluster's.")
    time_min: int = Field(240, ge=1, description="slurm: wall-clock limit per job in minutes.")
    gpus: int = Field(0, ge=0, description="slurm: GPUs per job.")
    cpus: int = Field(4, ge=1, description="slurm: CPU cores per job (also the job's torch threads unless runtime.num_threads).")
    mem_gb: int | None = Field(None, ge=1, description="slurm: memory per job in GiB; default the cluster's.")
    signal_delay_s: int = Field(
        120, ge=10, description="slurm: SIGUSR1 this many seconds before the time limit; the job checkpoints and requeues."
    )


class Config(_Section):
    """A complete, resolved fxbench configuration."""

    name: str | None = Field(None, description="Run name; default derived from model and time.")
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    launcher: LauncherConfig = Field(default_factory=LauncherConfig)

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if self.sampler.patch.enabled and self.sampler.patch.size > self.data.image_size:
            raise ValueError(
                f"sampler.patch.size ({self.sampler.patch.size}) must be <= data.image_size ({self.data.image_size})"
            )
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def sha256(self) -> str:
        """Hash of the resolved config (key order independent), without the ``launcher``
        section (it says where jobs run, not what they compute) and the ``select`` section
        (searches over saved predictions, after training)."""
        blob = json.dumps(self.model_dump(mode="json", exclude={"launcher", "select"}), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------------------
# loading, overrides, errors


def _model_for_path(parts: Sequence[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Config
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def _suggest(parts: Sequence[str]) -> str:
    model = _model_for_path(parts[:-1])
    if model is None:
        return ""
    close = difflib.get_close_matches(parts[-1], list(model.model_fields), n=1, cutoff=0.5)
    if not close:
        return f"; valid keys here: {', '.join(model.model_fields)}"
    return f"; did you mean '{'.'.join([*parts[:-1], close[0]])}'?"


def _format_validation_error(
    err: ValidationError, source: str, blame: Mapping[str, str] | None = None
) -> str:
    """One line for the first problem. ``blame`` maps dotted keys to the override that set them,
    so a bad ``--set optim.lr=-1`` is reported as ``--set optim.lr`` rather than as the file."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    dotted = ".".join(loc)
    culprit = _blame(dotted, blame or {})
    if culprit is not None:
        source = culprit
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{dotted or '<top level>'}'{_suggest(loc)}"
    msg = first["msg"].removeprefix("Value error, ")
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    # Skip the key when the label already names it (--set optim.lr) or when the check is on the
    # whole config (empty loc: its message names the keys); keep it for section-level checks.
    redundant = not dotted or (culprit is not None and culprit.endswith(f" {dotted}"))
    where = "" if redundant else f"{dotted}: "
    return f"{source}: {where}{msg}{more}"


def _blame(dotted: str, blame: Mapping[str, str]) -> str | None:
    """The override responsible for an error at ``dotted``: exact key, else the last override
    inside that section (model-level checks such as min <= max report the section)."""
    if dotted in blame:
        return blame[dotted]
    prefix = f"{dotted}." if dotted else ""
    inside = [label for key, label in blame.items() if key.startswith(prefix)]
    return inside[-1] if inside else None


def all_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    """Every dotted leaf key of the schema (used by completion and the docs generator)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(all_keys(ann, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    if not all(parts):
        raise ConfigError(f"{source}: malformed key '{dotted}'", "use section.key=value, e.g. optim.lr=1e-3")
    node = tree
    for i, part in enumerate(parts[:-1]):
        if _model_for_path(parts[: i + 1]) is None:
            raise ConfigError(f"{source}: unknown key '{'.'.join(parts[: i + 1])}'{_suggest(parts[: i + 1])}")
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    parent = _model_for_path(parts[:-1])
    if parent is None or parts[-1] not in parent.model_fields:
        raise ConfigError(f"{source}: unknown key '{dotted}'{_suggest(parts)}")
    node[parts[-1]] = value


def parse_value(text: str) -> Any:
    """Parse an override value as a YAML scalar or flow collection (safe: no code runs)."""
    try:
        value = yaml.safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        # PyYAML reads '1e-3' as a string; let pydantic see a number when it is one.
        try:
            return float(value) if any(c in value.lower() for c in "e.") else int(value)
        except ValueError:
            return value
    return value


_YAML_NULLS = frozenset({"", "null", "Null", "NULL", "~"})


def _text_field(dotted: str) -> tuple[bool, bool]:
    """(is a plain text or path field, accepts None) for a dotted key. Text fields
    (``name``, ``model.encoder``, ``model.weights``) must not turn into numbers (``--set name=2024``)."""
    parts = dotted.split(".")
    parent = _model_for_path(parts[:-1])
    field = parent.model_fields.get(parts[-1]) if parent is not None else None
    if field is None:
        return False, False
    members = getattr(field.annotation, "__args__", (field.annotation,))
    args = [a for a in members if a is not type(None)]
    return bool(args) and all(a in (str, Path) for a in args), len(args) < len(members)


def _typed_value(dotted: str, raw: str) -> Any:
    """Parse an override for ``dotted``: text fields keep the raw text (a YAML null word gives
    None where the key is optional); the rest go through :func:`parse_value` and are typed by
    pydantic."""
    is_text, optional = _text_field(dotted)
    if is_text:
        text = raw.strip()
        return None if optional and text in _YAML_NULLS else text
    return parse_value(raw)


def parse_override(item: str) -> tuple[str, Any]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}' has no '='", "write it as section.key=value, e.g. train.epochs=5")
    key, _, raw = item.partition("=")
    return key.strip(), _typed_value(key.strip(), raw)


def env_overrides(environ: Mapping[str, str] | None = None) -> list[tuple[str, Any]]:
    """``FXBENCH_OPTIM__LR=1e-3`` -> ``("optim.lr", 0.001)``. Non-config FXBENCH_ vars are ignored."""
    environ = os.environ if environ is None else environ
    out = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        dotted = name[len(ENV_PREFIX):].lower().replace("__", ".")
        out.append((dotted, _typed_value(dotted, raw)))
    return out


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", "check the path, or run `fxbench config show` for defaults")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte {err.start})", "save the config as UTF-8 YAML") from err
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(err, 'problem', err)}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def load_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> Config:
    """Resolve a config: defaults < ``base`` < file < environment < ``--set`` overrides."""
    tree: dict[str, Any] = json.loads(json.dumps(dict(base or {}), default=str))
    source = "config"
    if path is not None:
        source = str(path)
        file_tree = read_yaml(path)
        _deep_merge(tree, file_tree)
    try:
        Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from err
    blame: dict[str, str] = {}  # dotted key -> the override that set it last (for error lines)
    for key, value in env_overrides(environ):
        label = f"environment FXBENCH_{key.upper().replace('.', '__')}"
        _set_dotted(tree, key, value, label)
        blame.pop(key, None)
        blame[key] = label
    for item in overrides:
        key, value = parse_override(item)
        label = f"--set {key}"
        _set_dotted(tree, key, value, label)
        blame.pop(key, None)  # re-insert so the latest override is last for section-level blame
        blame[key] = label
    try:
        return Config.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source, blame)) from err


def _deep_merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(value, Mapping) and isinstance(dst.get(key), dict):
            _deep_merge(dst[key], value)
        else:
            dst[key] = value


def config_from_dict(data: Mapping[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(dict(data))
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from err
