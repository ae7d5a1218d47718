"""Batched training augmentations on tensors, on the training device (seed_spec 4.4).

One ``torch.Generator`` drives everything, so the same generator state gives the same output.
Every sample draws its own parameters; an operation is computed for the whole batch and kept
per sample with ``torch.where``, which avoids host syncs and data-dependent shapes on CUDA.

Order (the seed's, with the new filters after blur): geometry (h/v flip, rotation, affine
scale/translate, composed into one matrix and one ``grid_sample``: bilinear for the image,
nearest for the mask, zero fill) -> brightness -> contrast -> gamma -> autocontrast -> gaussian
blur -> sharpen -> local contrast -> gaussian noise -> cutout -> clamp to [0, 1].

Fixes of seed bug 10.11: noise is one channel (broadcast over channels, so replicated grey stays
grey) and cutout never covers a fracture pixel (a few positions are tried; none fits -> no cutout).
``positive_multiplier`` scales every probability except the flips for fractured images.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from fxbench.config import AugmentConfig

#: Cutout positions tried per image before giving up (each checked against the mask).
CUTOUT_TRIES = 8
#: Sharpen = unsharp mask against a gaussian blur of this sigma (pixels).
SHARPEN_SIGMA = 1.0
#: Local contrast = unsharp mask against a low-pass of this fraction of the image side,
#: with a per-image amount drawn from this range (CLAHE-like, no knobs in the schema).
LOCAL_CONTRAST_SCALE = 1 / 16
LOCAL_CONTRAST_AMOUNT = (0.3, 1.0)

# Columns of the per-sample uniform table drawn once per call.
_COLS = [
    "hflip", "vflip", "rot", "rot_angle", "aff", "aff_angle", "aff_tx", "aff_ty", "aff_scale",
    "bright", "bright_f", "contrast", "contrast_f", "gamma", "gamma_v", "autocontrast",
    "blur", "blur_sigma", "sharpen", "local", "local_amount", "noise", "noise_std", "cutout", "cutout_frac",
]  # fmt: skip
_C = {name: i for i, name in enumerate(_COLS)}


def _draw_uniform(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    # Draw on the generator's device: a CPU generator cannot fill a CUDA tensor.
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _draw_normal(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def _per_sample(x: torch.Tensor) -> torch.Tensor:
    """``[N]`` -> ``[N, 1, 1, 1]`` for broadcasting against images."""
    return x.view(-1, 1, 1, 1)


def _lerp(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + u * (hi - lo)


# --------------------------------------------------------------------------------------
# geometry


def geometry_theta(
    hflip: torch.Tensor,
    vflip: torch.Tensor,
    angle_deg: torch.Tensor,
    scale: torch.Tensor,
    shift_px: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``affine_grid`` matrices ``[N, 2, 3]`` for: flip, then scale and rotate about the centre,
    then translate by ``shift_px [N, 2]`` (x, y) pixels.

    The forward map in centred pixel coordinates is p' = R S F p + t; grid_sample needs the
    inverse, expressed in normalised coordinates (x_pix = x_norm * W / 2 with align_corners=False).
    """
    rad = torch.deg2rad(angle_deg)
    cos, sin = torch.cos(rad), torch.sin(rad)
    fx = 1.0 - 2.0 * hflip.float()
    fy = 1.0 - 2.0 * vflip.float()
    # Inverse linear part in pixel units: F S^-1 R^T.
    inv = torch.stack(
        [torch.stack([fx * cos, fx * sin], -1), torch.stack([-fy * sin, fy * cos], -1)], -2
    ) / scale.view(-1, 1, 1)
    # D = diag(W/2, H/2). Built from Python scalars only: a small torch.tensor(..., device=cuda)
    # would be a blocking host-to-device copy on every training step.
    hx, hy = width / 2.0, height / 2.0
    linear = torch.stack(  # D^-1 M D
        [torch.stack([inv[:, 0, 0], inv[:, 0, 1] * (hy / hx)], -1),
         torch.stack([inv[:, 1, 0] * (hx / hy), inv[:, 1, 1]], -1)], -2
    )
    moved = (inv @ shift_px.unsqueeze(-1)).squeeze(-1)
    offset = -torch.stack([moved[:, 0] / hx, moved[:, 1] / hy], -1)  # -D^-1 M t
    return torch.cat([linear, offset.unsqueeze(-1)], dim=-1)


def warp(
    images: torch.Tensor, masks: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply ``theta [N, 2, 3]``: image bilinear, mask nearest, zero outside."""
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    out_img = F.grid_sample(
        images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    out_mask = F.grid_sample(
        masks, grid.to(masks.dtype), mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out_img, out_mask


# --------------------------------------------------------------------------------------
# filters


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D gaussian kernels ``[N, 2*radius+1]`` for per-sample ``sigma [N]`` (pixels)."""
    x = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x[None, :] / sigma[:, None].clamp_min(1e-3)) ** 2)
    return k / k.sum(1, keepdim=True)


def separable_blur(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur ``[N, C, H, W]`` with per-sample 1-D ``kernels [N, K]`` along x then y (reflect padding)."""
    n, c, h, w = images.shape
    k = kernels.shape[1]
    radius = k // 2
    weight = kernels.to(images.dtype).repeat_interleave(
        c, dim=0
    )  # one kernel per (sample, channel)
    x = images.reshape(1, n * c, h, w)
    # Reflect padding needs pad < side; small images fall back to replicate.
    mode = "reflect" if radius < min(h, w) else "replicate"
    x = F.conv2d(
        F.pad(x, (radius, radius, 0, 0), mode=mode), weight.view(n * c, 1, 1, k), groups=n * c
    )
    x = F.conv2d(
        F.pad(x, (0, 0, radius, radius), mode=mode), weight.view(n * c, 1, k, 1), groups=n * c
    )
    return x.reshape(n, c, h, w)


def blur_radius(kernel: int | None, sigma_max: float) -> int:
    """Half-width of the blur kernel: ``kernel // 2`` for a fixed odd kernel (the seed's
    ``blur_kernel``, 5 -> 2), else ``ceil(3 * sigma_max)`` (the whole gaussian up to 3 sigma)."""
    if kernel is not None:
        return max(1, int(kernel) // 2)
    return max(1, math.ceil(3 * sigma_max))


def gaussian_blur(
    images: torch.Tensor, sigma: torch.Tensor, on: torch.Tensor, radius: int
) -> torch.Tensor:
    """The seed's Gaussian blur (seed_spec 4.4, item 8): a normalised gaussian truncated to
    2 * radius + 1 taps, the same sigma in x and y, on the samples where ``on [N]`` is set.

    Equals ``torchvision.transforms.functional.gaussian_blur`` with that kernel size (reflect
    padding). ``images [N, C, H, W]``; ``sigma [N]`` in pixels. The seed blurred the native
    image before resizing; fxbench blurs the network-size batch on the device, so sigma is in
    network pixels.
    """
    blurred = separable_blur(images, gaussian_kernels(sigma, radius))
    return torch.where(_per_sample(on), blurred, images)


def lowpass(images: torch.Tensor, fraction: float) -> torch.Tensor:
    """Wide low-pass (box average at ``fraction`` of the side, bilinear back up): cheap at any size."""
    h, w = images.shape[-2:]
    k = max(2, round(max(h, w) * fraction))
    small = F.avg_pool2d(images, kernel_size=k, stride=k, ceil_mode=True, count_include_pad=False)
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def cutout_boxes(
    masks: torch.Tensor, frac: torch.Tensor, u_pos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick a cutout box per image that covers no mask pixel.

    Args:
        masks: ``[N, 1, H, W]``; frac: ``[N]`` box side as a fraction of H and W;
        u_pos: ``[N, T, 2]`` uniforms for T candidate (top, left) positions.

    Returns ``(box [N, 1, H, W] bool, found [N] bool)``; the first candidate whose box sum over the
    mask (via an integral image) is 0 wins.
    """
    n, _, h, w = masks.shape
    bh = (frac * h).round().clamp(1, h).long()
    bw = (frac * w).round().clamp(1, w).long()
    top = (u_pos[..., 0] * (h - bh + 1)[:, None]).long().clamp_max((h - bh)[:, None])
    left = (u_pos[..., 1] * (w - bw + 1)[:, None]).long().clamp_max((w - bw)[:, None])
    sat = F.pad((masks[:, 0] > 0).float().cumsum(1).cumsum(2), (1, 0, 1, 0)).flatten(
        1
    )  # [N, (H+1)(W+1)]

    def at(r: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return sat.gather(1, r * (w + 1) + c)

    bottom, right = top + bh[:, None], left + bw[:, None]
    covered = at(bottom, right) - at(top, right) - at(bottom, left) + at(top, left)
    ok = covered < 0.5
    first = ok.int().argmax(1)  # argmax returns the first maximal index
    t = top.gather(1, first[:, None]).view(-1, 1, 1)
    l = left.gather(1, first[:, None]).view(-1, 1, 1)  # noqa: E741
    rows = torch.arange(h, device=masks.device).view(1, h, 1)
    cols = torch.arange(w, device=masks.device).view(1, 1, w)
    box = (
        (rows >= t) & (rows < t + bh.view(-1, 1, 1)) & (cols >= l) & (cols < l + bw.view(-1, 1, 1))
    )
    return box.unsqueeze(1), ok.any(1)


# --------------------------------------------------------------------------------------
# the augmenter


class Augmenter:
    """Config-driven batched augmentation; see the module docstring for the order and fixes.

    ``__call__(images [N,1,H,W] float in [0,1] (before normalisation), masks [N,1,H,W] float
    {0,1}, positive [N] bool, generator) -> (images, masks)`` on the tensors' device. For speed
    on CUDA pass a generator created on that device (a CPU generator works, with a copy).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg

    def _probabilities(self, positive: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample probabilities ``[N]``; every op but the flips scaled for positives."""
        cfg = self.cfg
        mult = torch.where(positive, cfg.positive_multiplier, 1.0)
        probs = {
            "rot": cfg.rotate_prob, "aff": cfg.affine_prob, "bright": cfg.brightness_prob,
            "contrast": cfg.contrast_prob, "gamma": cfg.gamma_prob, "autocontrast": cfg.autocontrast_prob,
            "blur": cfg.blur_prob, "sharpen": cfg.sharpen_prob, "local": cfg.local_contrast_prob,
            "noise": cfg.noise_prob, "cutout": cfg.cutout_prob,
        }  # fmt: skip
        out = {k: (p * mult).clamp(0.0, 1.0) for k, p in probs.items()}
        out["hflip"] = torch.full_like(mult, cfg.hflip_prob)
        out["vflip"] = torch.full_like(mult, cfg.vflip_prob)
        return out

    def __call__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        positive: torch.Tensor,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.cfg.enabled or images.shape[0] == 0:
            return images, masks
        dtype = images.dtype
        x = images.float()
        m = masks.float()
        device = x.device
        u = _draw_uniform((x.shape[0], len(_COLS)), generator, device)
        probs = self._probabilities(positive.to(device).bool())
        on = {name: u[:, _C[name]] < p for name, p in probs.items()}
        x, m = self._geometry(x, m, u, on)
        x = self._photometric(x, u, on)
        x = self._noise_and_cutout(x, m, u, on, generator)
        return x.clamp(0.0, 1.0).to(dtype), m.to(masks.dtype)

    def _geometry(
        self, x: torch.Tensor, m: torch.Tensor, u: torch.Tensor, on: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.cfg
        if max(cfg.hflip_prob, cfg.vflip_prob, cfg.rotate_prob, cfg.affine_prob) <= 0:
            return x, m
        h, w = x.shape[-2:]
        rot = on["rot"] * (2 * u[:, _C["rot_angle"]] - 1) * cfg.rotate_degrees
        aff = on["aff"]
        angle = rot + aff * (2 * u[:, _C["aff_angle"]] - 1) * cfg.affine_degrees
        scale = torch.where(
            aff, _lerp(u[:, _C["aff_scale"]], cfg.affine_scale_min, cfg.affine_scale_max), 1.0
        )
        # Whole-pixel shifts (the seed rounds them), so masks stay crisp under nearest sampling.
        tx = ((2 * u[:, _C["aff_tx"]] - 1) * cfg.affine_translate * w).round()
        ty = ((2 * u[:, _C["aff_ty"]] - 1) * cfg.affine_translate * h).round()
        shift = torch.stack([tx, ty], -1) * aff[:, None]
        theta = geometry_theta(on["hflip"], on["vflip"], angle, scale, shift, h, w)
        moved = on["hflip"] | on["vflip"] | on["rot"] | aff
        wx, wm = warp(x, m, theta)
        keep = _per_sample(moved)
        return torch.where(keep, wx, x), torch.where(keep, wm, m)

    def _photometric(
        self, x: torch.Tensor, u: torch.Tensor, on: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        cfg = self.cfg
        if cfg.brightness_prob > 0 and cfg.brightness > 0:
            factor = _lerp(u[:, _C["bright_f"]], 1 - cfg.brightness, 1 + cfg.brightness)
            x = torch.where(_per_sample(on["bright"]), (x * _per_sample(factor)).clamp(0, 1), x)
        if cfg.contrast_prob > 0 and cfg.contrast > 0:
            factor = _per_sample(_lerp(u[:, _C["contrast_f"]], 1 - cfg.contrast, 1 + cfg.contrast))
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = torch.where(
                _per_sample(on["contrast"]), (factor * x + (1 - factor) * mean).clamp(0, 1), x
            )
        if cfg.gamma_prob > 0:
            gamma = _per_sample(_lerp(u[:, _C["gamma_v"]], cfg.gamma_min, cfg.gamma_max))
            x = torch.where(_per_sample(on["gamma"]), x.clamp_min(0).pow(gamma), x)
        if cfg.autocontrast_prob > 0:
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            stretched = (x - lo) / (hi - lo).clamp_min(1e-6)
            x = torch.where(_per_sample(on["autocontrast"]) & (hi > lo), stretched, x)
        if cfg.blur_prob > 0:
            sigma = _lerp(u[:, _C["blur_sigma"]], cfg.blur_sigma_min, cfg.blur_sigma_max)
            x = gaussian_blur(x, sigma, on["blur"], blur_radius(cfg.blur_kernel, cfg.blur_sigma_max))
        if cfg.sharpen_prob > 0 and cfg.sharpen_amount > 0:
            sigma = torch.full((x.shape[0],), SHARPEN_SIGMA, device=x.device)
            soft = separable_blur(x, gaussian_kernels(sigma, math.ceil(3 * SHARPEN_SIGMA)))
            x = torch.where(
                _per_sample(on["sharpen"]), (x + cfg.sharpen_amount * (x - soft)).clamp(0, 1), x
            )
        if cfg.local_contrast_prob > 0:
            amount = _per_sample(_lerp(u[:, _C["local_amount"]], *LOCAL_CONTRAST_AMOUNT))
            boosted = (x + amount * (x - lowpass(x, LOCAL_CONTRAST_SCALE))).clamp(0, 1)
            x = torch.where(_per_sample(on["local"]), boosted, x)
        return x

    def _noise_and_cutout(
        self,
        x: torch.Tensor,
        m: torch.Tensor,
        u: torch.Tensor,
        on: dict[str, torch.Tensor],
        generator: torch.Generator,
    ) -> torch.Tensor:
        cfg = self.cfg
        n, _, h, w = x.shape
        if cfg.noise_prob > 0 and cfg.noise_std_max > 0:
            std = _lerp(u[:, _C["noise_std"]], cfg.noise_std_min, cfg.noise_std_max) * on["noise"]
            x = x + _draw_normal((n, 1, h, w), generator, x.device) * _per_sample(std)
        if cfg.cutout_prob > 0:
            frac = _lerp(u[:, _C["cutout_frac"]], cfg.cutout_frac_min, cfg.cutout_frac_max)
            u_pos = _draw_uniform((n, CUTOUT_TRIES, 2), generator, x.device)
            box, found = cutout_boxes(m, frac, u_pos)
            erase = box & _per_sample(on["cutout"] & found)
            x = x.masked_fill(erase, 0.0)
        return x
