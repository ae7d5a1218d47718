"""Everyday verbs that need no trained model: `doctor`, `runs`, `show`, `models`.

Module level imports only typer, rich and the standard library (plus fxbench's own light
modules): `fxbench --help` and tab completion load this file and must stay fast. torch, yaml
and the model registry are imported inside the verbs that need them.

Run folders are read leniently: `runs` and `show` are how people look at old or broken runs,
so a missing or unreadable file becomes an empty cell, never a crash.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from fxbench.cli.common import console, handle_errors, out
from fxbench.errors import FxbenchError, UsageError

#: A folder is a run folder when it holds one of these (config first: written before training).
RUN_MARKERS = ("config.resolved.yaml", "run.json")


_GIB = 1024**3


def _echo_json(obj: Any) -> None:
    """Machine output: plain JSON on stdout (no Rich markup or colour)."""
    from fxbench.io import dumps_json

    typer.echo(dumps_json(obj), nl=False)


# ======================================================================================
# run folders: discovery and lenient reading (pure functions; `runs`, `show`, completion)


def is_run_dir(path: Path) -> bool:
    """True when ``path`` looks like a run folder (has config.resolved.yaml or run.json)."""
    return any((path / marker).is_file() for marker in RUN_MARKERS)


def find_runs(root: Path) -> list[Path]:
    """Run folders at ``root`` itself, ``root/*`` and ``root/*/*``, sorted by path.

    One level of grouping is searched because sweeps and seeds nest runs
    (``runs/dg_aug/seed_42``); deeper trees are not walked so listing stays instant.
    """
    if not root.is_dir():
        return []
    if is_run_dir(root):
        return [root]
    found: list[Path] = []
    for child in _subdirs(root):
        if is_run_dir(child):
            found.append(child)
        else:
            found.extend(grand for grand in _subdirs(child) if is_run_dir(grand))
    return sorted(found)


def _subdirs(path: Path) -> list[Path]:
    try:
        return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:  # unreadable folder: nothing to list there
        return []


def complete_run_dir(incomplete: str) -> list[str]:
    """Shell completion for RUN arguments: run folders holding config.resolved.yaml.

    Offers paths under the runs root (``./runs`` or ``$FXBENCH_RUNS``) and, when the typed
    word already has a folder part (``other/runs/``), run folders under that folder. A bare
    name matching a run under the root is offered as the name (`show` resolves names there).
    For verbs that need a path (``eval``, ``tune``, ``predict``...) use
    :func:`complete_run_path`, which never offers bare names.
    """
    return _complete_runs(incomplete, names=True)


def complete_run_path(incomplete: str) -> list[str]:
    """Like :func:`complete_run_dir`, but only paths: for RUN arguments that are opened as
    given (``eval``, ``tune``, ``predict``, ``ensemble``, ``blend``), where a bare run name
    would not resolve. Use as ``typer.Argument(..., autocompletion=complete_run_path)``."""
    return _complete_runs(incomplete, names=False)


def _complete_runs(incomplete: str, names: bool) -> list[str]:
    from fxbench.paths import default_runs_root

    default_root = default_runs_root()
    # (folder to search, the text the user typed for it: offered paths must start with it,
    # so "./runs/" completes to "./runs/x", not to the normalised "runs/x")
    roots: list[tuple[Path, str | None]] = [(default_root, None)]
    head = os.path.dirname(incomplete)
    if head and Path(head).is_dir():
        roots.append((Path(head), head))
    paths: set[str] = set()
    run_names: set[str] = set()
    for root, typed in roots:
        for run in find_runs(root):
            if (run / "config.resolved.yaml").is_file():
                rel = run.relative_to(root).as_posix() if run != root else ""
                paths.add(str(run) if typed is None else (f"{typed.rstrip('/')}/{rel}" if rel else typed))
                if typed is None:
                    run_names.add(rel or run.name)
    matches = {p for p in paths if p.startswith(incomplete)}
    if not matches and names and "/" not in incomplete:
        matches = {n for n in run_names if n.startswith(incomplete)}
    return sorted(matches)


def _read_json_lenient(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml_lenient(path: Path) -> dict[str, Any] | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def _read_history(path: Path) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [row for row in csv.DictReader(fh) if any((v or "").strip() for v in row.values())]
    except (OSError, csv.Error):
        return []


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN -> None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but not ours, or a platform without signal 0: assume alive
    return True


def _lock_owner(lock: Path) -> tuple[int, str | None]:
    """(pid, host) from a lock file: ``1234``, ``1234@host``, ``1234 host`` or JSON ``{pid, host}``.
    pid 0 when unreadable."""
    try:
        text = lock.read_text().strip()
    except OSError:
        return 0, None
    if text.startswith("{"):
        try:
            data = json.loads(text)
            return int(data.get("pid") or 0), data.get("host") or data.get("hostname")
        except (ValueError, TypeError, AttributeError):
            return 0, None
    head, _, host = text.replace("@", " ").partition(" ")
    try:
        return int(head or "0"), (host.strip() or None)
    except ValueError:
        return 0, None


def _status(run: Path, run_json: dict[str, Any] | None) -> str:
    """Status recorded in run.json; 'running' whose lock holder is dead means it was killed."""
    if run_json is None:
        return "unknown"  # not started yet, or run.json unreadable
    status = str(run_json.get("status") or "unknown")
    if status == "running":
        pid, host = _lock_owner(run / ".lock")
        # A killed trainer cannot update run.json, but its lock stays behind. A lock taken on
        # another machine (shared runs folder) cannot be checked from here: trust run.json.
        same_host = host is None or host == socket.gethostname()
        if pid and same_host and not _pid_alive(pid):
            return "interrupted"
    return status


def _best_from_run_json(run_json: dict[str, Any], metric: str | None) -> tuple[str | None, float | None, int | None]:
    """Best validation value recorded by the trainer, in the shapes it may write:
    ``best: {metric, value, epoch}``, ``best_metric``/``best_value``/``best_epoch``, ``best_<metric>``."""
    name = run_json.get("selection_metric") or metric
    epoch = run_json.get("best_epoch")
    best = run_json.get("best")
    value: float | None = None
    if isinstance(best, dict):
        name = best.get("metric") or best.get("name") or name
        for key in ("value", "score", name):
            if key and (value := _as_float(best.get(key))) is not None:
                break
        epoch = best.get("epoch", epoch)
    elif _as_float(best) is not None:
        value = _as_float(best)
    if value is None:
        if isinstance(run_json.get("best_metric"), str):
            name = run_json["best_metric"]
        for key in ("best_value", "best_score", "best_metric", f"best_{name}", f"best_val_{name}"):
            if (value := _as_float(run_json.get(key))) is not None:
                break
    return (str(name) if name else None), value, (int(epoch) if epoch is not None and _as_float(epoch) is not None else None)


def _best_from_history(rows: list[dict[str, str]], metric: str | None) -> tuple[float | None, int | None]:
    """Highest value of the selection metric over validated epochs (every selection metric,
    neg_loss included, is higher-is-better)."""
    if not rows or not metric:
        return None, None
    # `selection` holds the selection score itself (the only column for composite metrics).
    column = next((c for c in (f"val_{metric}", f"val/{metric}", metric, "selection") if c in rows[0]), None)
    if column is None:
        return None, None
    best: tuple[float | None, int | None] = (None, None)
    for i, row in enumerate(rows, start=1):
        value = _as_float(row.get(column))
        if value is not None and (best[0] is None or value > best[0]):
            epoch = _as_float(row.get("epoch"))
            best = (value, int(epoch) if epoch is not None else i)
    return best


def _count_lines(path: Path) -> int:
    try:
        return sum(1 for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
    except OSError:
        return 0


@dataclass
class RunSummary:
    """One row of `fxbench runs` (also the `--json` record)."""

    name: str
    path: str
    status: str
    model: str | None
    epochs_done: int
    epochs_planned: int | None
    selection_metric: str | None
    best_value: float | None
    best_epoch: int | None
    test_accesses: int


def summarize_run(run: Path, root: Path | None = None) -> RunSummary:
    """Read a run folder's status, progress and best validation value without loading torch."""
    config = _read_yaml_lenient(run / "config.resolved.yaml") or {}
    run_json = _read_json_lenient(run / "run.json")
    history = _read_history(run / "history.csv")
    train_section, model_section = config.get("train"), config.get("model")
    train: dict[str, Any] = train_section if isinstance(train_section, dict) else {}
    model: dict[str, Any] = model_section if isinstance(model_section, dict) else {}
    metric, best, best_epoch = _best_from_run_json(run_json or {}, train.get("selection_metric"))
    if best is None:
        best, best_epoch = _best_from_history(history, metric)
    try:
        name = run.relative_to(root).as_posix() if root is not None and run != root else run.name
    except ValueError:
        name = run.name
    planned = _as_float(train.get("epochs"))
    return RunSummary(
        name=name,
        path=str(run),
        status=_status(run, run_json),
        model=model.get("name"),
        epochs_done=len(history) or int(_as_float((run_json or {}).get("epochs_done")) or 0),
        epochs_planned=int(planned) if planned is not None else None,
        selection_metric=metric,
        best_value=best,
        best_epoch=best_epoch,
        test_accesses=_count_lines(run / "test_access.log"),
    )


def _resolve_run(run: Path, results: bool = False) -> Path:
    """A RUN argument: a path, or a name under the runs root (``fxbench show baseline-2026...``).

    With ``results``, result folders (ensemble, blend, peer: members.json or metrics/test.json)
    are accepted too.
    """
    from fxbench.paths import default_runs_root

    candidates = [run] if run.is_absolute() else [run, default_runs_root() / run]
    for cand in candidates:
        if cand.is_dir():
            is_result = results and any((cand / m).is_file() for m in ("members.json", "metrics/test.json"))
            if not is_run_dir(cand) and not is_result:
                raise UsageError(
                    f"{cand} is not a run folder (no config.resolved.yaml or run.json)",
                    "pass a folder made by `fxbench train`; `fxbench runs` lists them",
                )
            return cand
    raise UsageError(f"run folder not found: {run}", "`fxbench runs` lists the runs under ./runs or $FXBENCH_RUNS")


# --------------------------------------------------------------------------------------
# metrics files: find headline values and their confidence intervals in any reasonable shape


def _ci_of(entry: dict[str, Any]) -> tuple[float | None, float | None]:
    for key in ("ci", "ci95", "ci_95", "interval"):
        ci = entry.get(key)
        if isinstance(ci, (list, tuple)) and len(ci) == 2:
            return _as_float(ci[0]), _as_float(ci[1])
        if isinstance(ci, dict):
            return _ci_of(ci)
    for lo_key, hi_key in (("ci_low", "ci_high"), ("ci_lo", "ci_hi"), ("low", "high"), ("lo", "hi"), ("lower", "upper")):
        if lo_key in entry or hi_key in entry:
            return _as_float(entry.get(lo_key)), _as_float(entry.get(hi_key))
    return None, None


def _metric_value(raw: Any) -> tuple[float | None, float | None, float | None]:
    if isinstance(raw, dict):
        value = next((_as_float(raw[k]) for k in ("value", "point", "mean", "estimate") if k in raw), None)
        lo, hi = _ci_of(raw)
        return value, lo, hi
    return _as_float(raw), None, None


def headline_metrics(body: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """``{metric: {value, ci_low, ci_high}}`` for the HEADLINE_METRICS found in a metrics file.

    Looks at the top level, then one level down (``overall``, ``metrics``, ``segmentation``,
    ``presence``...). The CI comes from a sibling ``<name>_ci95: [lo, hi]`` (what
    fxbench.evaluate writes), the entry itself (``{value, ci: [lo, hi]}``) or a ``ci`` map.
    """
    scopes = [body] + [v for k, v in body.items() if isinstance(v, dict) and k not in ("ci", "bootstrap", "subgroups")]
    ci_maps = [m for m in (body.get("ci"), body.get("bootstrap")) if isinstance(m, dict)]
    found: dict[str, dict[str, float | None]] = {}
    from fxbench.evaluate.bootstrap import HEADLINE_METRICS

    for key in HEADLINE_METRICS:
        for scope in scopes:
            if key not in scope:
                continue
            value, lo, hi = _metric_value(scope[key])
            if value is None:
                continue
            if lo is None and hi is None and f"{key}_ci95" in scope:
                lo, hi = _ci_of({"ci": scope[f"{key}_ci95"]})
            if lo is None and hi is None:
                for ci_map in ci_maps:
                    if key in ci_map:
                        entry = ci_map[key]
                        lo, hi = _ci_of(entry if isinstance(entry, dict) else {"ci": entry})
                        break
            found[key] = {"value": value, "ci_low": lo, "ci_high": hi}
            break
    return found


# ======================================================================================
# doctor


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
            checks.append(Check("CUDA", "info", "no GPU found (CPU mode)", "training runs on the CPU: slow but works"))
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


_STATUS_STYLE = {"ok": "green", "info": "cyan", "warn": "yellow", "fail": "bold red"}


# ======================================================================================
# verbs


@handle_errors
def doctor(as_json: bool = typer.Option(False, "--json", help="Print the result object as JSON on stdout.")) -> None:
    """Check the install: torch, CUDA, GPUs, numerics, data home, disk.

    Also reports cuDNN, bf16 support, optional extras and HF_HUB_OFFLINE. Exits 1 with
    advice when a check fails; warnings and notes do not fail.
    """
    checks = run_doctor()
    failed = [c for c in checks if c.status == "fail"]
    counts = {s: sum(c.status == s for c in checks) for s in _STATUS_STYLE}
    if as_json:
        _echo_json({"ok": not failed, "counts": counts, "checks": [asdict(c) for c in checks]})
    else:
        table = Table(title="fxbench doctor", show_lines=False)
        table.add_column("check", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("value", overflow="fold")
        for c in checks:
            table.add_row(c.name, f"[{_STATUS_STYLE[c.status]}]{c.status}[/]", c.value)
        out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred
        for c in checks:
            if c.advice and c.status != "ok":
                out.print(f"  {c.status} {c.name}: {c.advice}", markup=False, soft_wrap=True)
        out.print(", ".join(f"{n} {s}" for s, n in counts.items()), markup=False)
    if failed:
        raise FxbenchError(
            f"doctor: {len(failed)} check(s) failed: {', '.join(c.name for c in failed)}",
            "see the advice above",
        )


@handle_errors
def runs(
    root: Path | None = typer.Argument(
        None, metavar="dir", help="Folder to search (default: $FXBENCH_RUNS or ./runs).", show_default=False
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON record per run on stdout."),
) -> None:
    """List runs: status, epochs, best val metric, test accesses.

    Looks in dir/* and dir/*/* for run folders (they hold config.resolved.yaml or run.json).
    """
    from fxbench.paths import default_runs_root

    explicit = root is not None
    root = root if root is not None else default_runs_root()
    if explicit and not root.is_dir():
        raise UsageError(f"runs folder not found: {root}", "pass the folder that holds your run folders")
    summaries = [summarize_run(run, root) for run in find_runs(root)]
    if as_json:
        _echo_json([asdict(s) for s in summaries])
        return
    sweeps = _sweep_lines(root)
    if not summaries and not sweeps:
        console.print(f"no runs under {root} (train one with `fxbench train`, or pass the folder)", markup=False)
        return
    if not summaries:  # a submitted sweep whose jobs have not started yet
        for line in sweeps:
            out.print(line, markup=False)
        return
    # Names are paths relative to the root in the title (--json has full paths). Short cells
    # never wrap; a long name folds rather than being cut off. When every run selects on the
    # same metric, its name goes in the header to keep the table narrow.
    metrics = {s.selection_metric for s in summaries if s.best_value is not None}
    shared = metrics.pop() if len(metrics) == 1 else None
    table = Table(title=f"runs in {root}")
    table.add_column("name", overflow="fold", min_width=16)
    table.add_column("status", no_wrap=True)
    table.add_column("model", overflow="ellipsis", no_wrap=True, max_width=24)
    table.add_column("epochs", no_wrap=True, justify="right")
    table.add_column(f"best {shared}" if shared else "best val", no_wrap=True)
    table.add_column("tests", no_wrap=True, justify="right")
    for s in summaries:
        epochs = f"{s.epochs_done}/{s.epochs_planned}" if s.epochs_planned else str(s.epochs_done)
        best = "-"
        if s.best_value is not None:
            best = f"{s.best_value:.4f}" if shared else f"{s.selection_metric or '?'} {s.best_value:.4f}"
            if s.best_epoch is not None:
                best += f" @{s.best_epoch}"
        table.add_row(s.name, s.status, s.model or "-", epochs, best, str(s.test_accesses))
    out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred
    for line in sweeps:
        out.print(line, markup=False)


def _config_summary(config: dict[str, Any]) -> dict[str, Any]:
    def get(section: str, key: str) -> Any:
        node = config.get(section)
        return node.get(key) if isinstance(node, dict) else None

    return {
        "model": get("model", "name"),
        "image_size": get("data", "image_size"),
        "epochs": get("train", "epochs"),
        "batch_size": get("train", "batch_size"),
        "lr": get("optim", "lr"),
        "schedule": get("schedule", "name"),
        "seed": get("train", "seed"),
        "selection_metric": get("train", "selection_metric"),
    }


def _artifacts(run: Path) -> list[dict[str, Any]]:
    fixed = ["config.resolved.yaml", "env.json", "run.json", "history.csv", "checkpoints/best.pt",
             "checkpoints/last.pt", "decision.json", "test_access.log"]
    paths = [run / rel for rel in fixed]
    for pattern in ("predictions/*.npz", "metrics/*.json", "plots/*", "*.md"):
        paths.extend(sorted(run.glob(pattern)))
    items = []
    for path in paths:
        if path.is_file():
            items.append({"path": str(path), "bytes": path.stat().st_size})
    return items


def _fmt_num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."  # sha256: the prefix is enough to compare by eye
    return str(value)


@handle_errors
def show(
    run: Path = typer.Argument(
        ..., help="Run folder (or its name under ./runs).", autocompletion=complete_run_dir
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary object as JSON on stdout."),
) -> None:
    """Summarise a run (or ensemble/blend/peer folder): config, metrics with CIs, decision, files.
    For a sweep folder: its jobs' state (pending, running, finished, failed with the log tail)."""
    from fxbench.launch.state import is_sweep_dir

    if is_sweep_dir(run) and not is_run_dir(run):
        _show_sweep(run, as_json)
        return
    run = _resolve_run(run, results=True)
    config_path = run / "config.resolved.yaml"
    config = _read_yaml_lenient(config_path)
    summary = summarize_run(run)
    metrics: dict[str, dict[str, Any]] = {}
    for path in sorted((run / "metrics").glob("*.json")):
        body = _read_json_lenient(path)
        metrics[path.stem] = headline_metrics(body) if body is not None else {}
    decision = _read_json_lenient(run / "decision.json")
    from fxbench.select.seal import built_from_max_accesses

    max_accesses = built_from_max_accesses(run)
    result: dict[str, Any] = {
        "run": str(run),
        "status": summary.status,
        "config": _config_summary(config or {}),
        "epochs_done": summary.epochs_done,
        "selection_metric": summary.selection_metric,
        "best_value": summary.best_value,
        "best_epoch": summary.best_epoch,
        "test_accesses": summary.test_accesses,
        "max_test_accesses": max_accesses,
        "decision_source": (_read_json_lenient(run / "metrics" / "test.json") or {}).get("decision_source"),
        "metrics": metrics,
        "decision": decision,
        "artifacts": _artifacts(run),
    }
    if as_json:
        _echo_json(result)
        return
    out.print(f"run {run}  status {summary.status}", markup=False)
    if config is None:
        out.print(f"  config: {config_path} missing or unreadable", markup=False)
    else:
        cfg = result["config"]
        out.print("  config: " + ", ".join(f"{k}={_fmt_num(v)}" for k, v in cfg.items() if v is not None), markup=False)
    best = "-" if summary.best_value is None else f"{summary.selection_metric} {summary.best_value:.4f}"
    if summary.best_value is not None and summary.best_epoch is not None:
        best += f" at epoch {summary.best_epoch}"
    out.print(f"  epochs done: {summary.epochs_done}; best val: {best}; test accesses: {summary.test_accesses} "
              f"(max over the runs it is built from: {max_accesses})", markup=False)
    if result["decision_source"] == "user-fixed":
        out.print("  test metrics: user-fixed operating point (not chosen on val)", markup=False)
    if metrics:
        table = Table(title="metrics (95% CI)")
        table.add_column("split", no_wrap=True)
        table.add_column("metric", no_wrap=True)
        table.add_column("value", justify="right")
        table.add_column("CI", justify="right")
        for split, values in metrics.items():
            if not values:
                table.add_row(split, "(no headline metrics found)", "", "")
            for key, v in values.items():
                ci = f"[{v['ci_low']:.4f}, {v['ci_high']:.4f}]" if v["ci_low"] is not None and v["ci_high"] is not None else ""
                table.add_row(split, key, f"{v['value']:.4f}", ci)
        out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred
    if decision is not None:
        out.print("  decision: " + ", ".join(f"{k}={_fmt_num(v)}" for k, v in decision.items()), markup=False)
    out.print("  artifacts:", markup=False)
    for item in result["artifacts"]:
        out.print(f"    {item['path']}  ({item['bytes']:,} bytes)", markup=False)


def _show_sweep(sweep_dir: Path, as_json: bool) -> None:
    from fxbench.cli.sweep_view import print_sweep_state
    from fxbench.launch.state import sweep_states

    record, states = sweep_states(sweep_dir)
    if as_json:
        _echo_json({"sweep": str(sweep_dir), "launcher": record.get("launcher"), "jobs": [s.to_dict() for s in states]})
        return
    print_sweep_state(out, sweep_dir, record, states)


def _sweep_lines(root: Path) -> list[str]:
    """One line per sweep folder under ``root`` (or ``root`` itself) with its jobs' states."""
    from fxbench.launch.state import is_sweep_dir, state_counts, sweep_states

    folders = [root] if is_sweep_dir(root) else [d for d in _subdirs(root) if is_sweep_dir(d)]
    lines = []
    for folder in folders:
        record, states = sweep_states(folder, tail=0)
        counts = ", ".join(f"{n} {s}" for s, n in state_counts(states).items())
        launcher = (record.get("launcher") or {}).get("name", "local")
        lines.append(f"sweep {folder} ({launcher}): {counts or 'no jobs'}  (fxbench show {folder})")
    return lines


@handle_errors
def models(as_json: bool = typer.Option(False, "--json", help="Print [{name, description, default}] on stdout.")) -> None:
    """List the model names accepted by model.name."""
    try:
        from fxbench import models as registry
    except ImportError as err:
        raise FxbenchError(f"the model registry is not available in this install: {err}",
                           "reinstall fxbench; `fxbench doctor` checks the install") from err
    from fxbench.config import ModelConfig  # light (pydantic): marks the default

    names = sorted(registry.list_models())
    # Descriptions are optional so a registry without them still lists its names.
    describe = getattr(registry, "model_descriptions", None)
    descriptions: dict[str, str] = describe() if callable(describe) else {}
    default = ModelConfig().name
    rows = [{"name": n, "description": descriptions.get(n, ""), "default": n == default} for n in names]
    if as_json:
        _echo_json(rows)
        return
    table = Table(title="models (use with --set model.name=NAME)")
    table.add_column("name", no_wrap=True)
    table.add_column("description", overflow="fold")
    for row in rows:
        table.add_row(f"{row['name']}{' (default)' if row['default'] else ''}", str(row["description"]))
    out.print(table, soft_wrap=False)  # tables fit the width; titles stay centred


def register(app: typer.Typer) -> None:
    """Add this module's verbs to ``app``."""
    app.command("doctor")(doctor)
    app.command("runs")(runs)
    app.command("show")(show)
    app.command("models")(models)
