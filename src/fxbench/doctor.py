"""Install checks behind `fxbench doctor`: torch, CUDA, GPUs, numerics, data home, disk, extras.

Each check returns a :class:`Check` (name, status ok|info|warn|fail, value, advice); the CLI
only renders them. torch is imported inside the checks, so importing this module is cheap.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

_GIB = 1024**3


@dataclass
class Check:
    """One line of `fxbench doctor`. status: ok | info | warn | fail (only fail exits 1)."""

    name: str
    status: str
    value: str
    advice: str = ""


def _numerics_check(device: str) -> Check:
    """A 64x96 @ 96x48 matmul and a 3x3 conv in float32 on ``device`` against float64 on the CPU.

    The tolerance (1e-2 relative Frobenius error) admits TF32 on Ampere and newer GPUs but
    catches wrong kernels, a torch build without this GPU's architecture, or broken drivers.
    """
    import torch
    import torch.nn.functional as F

    label = f"numerics {device}"
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(64, 96, generator=gen, dtype=torch.float64)
        b = torch.randn(96, 48, generator=gen, dtype=torch.float64)
        x = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
        w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
        mm = (a.float().to(device) @ b.float().to(device)).double().cpu()
        conv = F.conv2d(x.float().to(device), w.float().to(device), padding=1).double().cpu()
        err_mm = float((mm - a @ b).norm() / (a @ b).norm())
        ref_conv = F.conv2d(x, w, padding=1)
        err_conv = float((conv - ref_conv).norm() / ref_conv.norm())
    except Exception as err:  # noqa: BLE001 - any failure here is the finding
        return Check(label, "fail", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}",
                     "install a torch build that supports this device (see pytorch.org), or train with --set runtime.device=cpu")
    value = f"matmul rel err {err_mm:.1e}, conv {err_conv:.1e}"
    if not (err_mm < 1e-2 and err_conv < 1e-2):  # also catches NaN
        return Check(label, "fail", value, "results disagree with a float64 reference: check the driver and torch build")
    return Check(label, "ok", value)


def _bf16_check(index: int) -> Check:
    """Native bf16 on ``cuda:index`` (compute capability >= 8.0), checked with a bf16 matmul.

    torch.cuda.is_bf16_supported() also says yes for emulated bf16 on older GPUs, where it is
    slow; the capability is the per-device answer that matters for runtime.amp.
    """
    import torch

    name = f"bf16 cuda:{index}"
    major, minor = torch.cuda.get_device_capability(index)
    native = torch.cuda.is_bf16_supported() if torch.version.hip else major >= 8
    if not native:
        return Check(name, "info", f"not native on compute {major}.{minor}",
                     "runtime.amp=auto falls back to fp32; --set runtime.amp=fp16 is faster here")
    try:
        gen = torch.Generator().manual_seed(1)
        a = torch.randn(64, 64, generator=gen, dtype=torch.float64)
        dev = f"cuda:{index}"
        got = (a.to(dev, torch.bfloat16) @ a.to(dev, torch.bfloat16)).double().cpu()
        err = float((got - a @ a).norm() / (a @ a).norm())
    except Exception as exc:  # noqa: BLE001 - any failure here is the finding
        return Check(name, "fail", f"{type(exc).__name__}: {exc}", "use --set runtime.amp=none")
    # bf16 keeps 8 mantissa bits: ~4e-3 relative error per product; 5e-2 flags real breakage.
    status = "ok" if err < 5e-2 else "fail"
    return Check(name, status, f"supported, matmul rel err {err:.1e}", "" if status == "ok" else "use --set runtime.amp=none")


def _torch_checks() -> list[Check]:
    try:
        import torch
    except Exception as err:  # noqa: BLE001 - a broken torch install is exactly what we report
        return [Check("torch", "fail", f"not importable: {err}", "pip install 'torch>=2.2' (see pytorch.org for CUDA builds)")]
    checks = [Check("torch", "ok", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'})")]
    if not torch.cuda.is_available():
        if torch.version.cuda and shutil.which("nvidia-smi"):
            # A driver is installed but torch cannot use it: a version mismatch, most likely.
            checks.append(Check("CUDA", "warn", "NVIDIA driver present, but torch sees no usable GPU",
                                "compare `nvidia-smi` with the torch CUDA build; training falls back to the CPU"))
        elif torch.version.cuda:
            checks.append(Check("CUDA", "info", "no GPU found (CPU mode)",
                                "training runs on the CPU: slow but works. This torch is the CUDA build (about "
                                "5 GB); on a machine without a GPU the CPU build is enough: see docs/install.md"))
        else:
            checks.append(Check("CUDA", "info", "not available (CPU-only torch)", "install a CUDA build of torch to train on a GPU"))
        checks.append(_numerics_check("cpu"))
        return checks
    count = torch.cuda.device_count()
    checks.append(Check("CUDA", "ok", f"available, {count} device(s), runtime {torch.version.cuda}"))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    checks.append(Check("cuDNN", "ok" if cudnn else "warn", str(cudnn) if cudnn else "not available",
                        "" if cudnn else "convolutions will be slow; reinstall torch with cuDNN"))
    for i in range(count):
        props = torch.cuda.get_device_properties(i)
        try:
            free, total = torch.cuda.mem_get_info(i)
            mem = f"{total / _GIB:.1f} GiB ({free / _GIB:.1f} GiB free)"
        except Exception:  # noqa: BLE001 - some drivers refuse mem_get_info; total is enough
            mem = f"{props.total_memory / _GIB:.1f} GiB"
        checks.append(Check(f"GPU cuda:{i}", "ok", f"{props.name}, {mem}, compute {props.major}.{props.minor}"))
        checks.append(_bf16_check(i))
    checks.append(_numerics_check("cpu"))
    checks.extend(_numerics_check(f"cuda:{i}") for i in range(count))
    return checks


def _disk_checks() -> list[Check]:
    from fxbench.paths import HOME_ENV, data_home, prepared_dir

    home = data_home()
    origin = f"${HOME_ENV}" if os.environ.get(HOME_ENV) else "default"
    existing = home
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # free space and permissions of the folder it will be made in
    writable = os.access(existing, os.W_OK)
    checks = [Check(
        "data home", "ok" if writable else "fail",
        f"{home} ({origin}{'' if home.exists() else ', not created yet'})",
        "" if writable else f"{existing} is not writable: set {HOME_ENV} to a writable folder",
    )]
    try:
        free = shutil.disk_usage(existing).free / _GIB
        low = free < 5
        checks.append(Check("free disk", "warn" if low else "ok", f"{free:.1f} GiB at {existing}",
                            f"the archive, prepared caches and runs need a few GiB: free space or set {HOME_ENV}" if low else ""))
    except OSError as err:
        checks.append(Check("free disk", "warn", f"unknown ({err})"))
    prepared = prepared_dir()
    if (prepared / "manifest.csv").is_file():
        checks.append(Check("prepared data", "ok", str(prepared)))
    else:
        checks.append(Check("prepared data", "info", "not prepared yet",
                            "run `fxbench download` then `fxbench prepare`, or point --set data.prepared=PATH at a prepared folder"))
    return checks


def _package_checks() -> list[Check]:
    from importlib.metadata import PackageNotFoundError, version

    # (distribution, required?, what it is for / how to get it)
    packages = (
        ("torchvision", True, "pip install torchvision (it must match torch)"),
        ("timm", True, "pip install timm"),
        ("matplotlib", True, "pip install matplotlib (needed for plots in reports)"),
        ("pydicom", False, "pip install 'fxbench[dicom]' to read DICOM files in `predict`"),
        ("scikit-learn", False, "pip install scikit-learn (only the tests' metric cross-checks use it)"),
    )
    checks = []
    for dist, required, advice in packages:
        try:
            checks.append(Check(dist, "ok", version(dist)))
        except PackageNotFoundError:
            checks.append(Check(dist, "fail" if required else "info", "not installed", advice))
    return checks


def _offline_check() -> Check:
    raw = os.environ.get("HF_HUB_OFFLINE", "")
    on = raw.strip().lower() in {"1", "true", "yes", "on"}
    if on:
        return Check("HF_HUB_OFFLINE", "info", f"on ({raw})", "pretrained weights must be local: --set model.weights=PATH")
    return Check("HF_HUB_OFFLINE", "info", f"off{f' ({raw})' if raw else ''}",
                 "model.pretrained=true may download from the Hugging Face Hub; set HF_HUB_OFFLINE=1 to forbid")


def run_doctor() -> list[Check]:
    """All doctor checks, in display order."""
    from fxbench._version import __version__

    py_ok = sys.version_info >= (3, 10)
    checks = [
        Check("python", "ok" if py_ok else "fail", f"{sys.version.split()[0]} ({sys.executable})",
              "" if py_ok else "fxbench needs Python >= 3.10"),
        Check("fxbench", "ok", __version__),
    ]
    checks += _torch_checks()
    checks += _disk_checks()
    checks += _package_checks()
    checks.append(_offline_check())
    return checks
