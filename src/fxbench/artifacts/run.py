"""Run folders: creation, lock file, environment record, status."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fxbench._version import __version__
from fxbench.errors import ConfigError, FxbenchError, RunLockedError, UsageError
from fxbench.io import read_json, write_json_atomic

LOCK_NAME = ".lock"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_pid(lock: Path) -> int:
    try:
        return int(lock.read_text().strip() or "0")
    except (OSError, ValueError):
        return 0


def lock_holder(run_dir: Path) -> int | None:
    """pid of another live process holding ``RUN/.lock``, or None (no lock, or a stale one)."""
    lock = Path(run_dir) / LOCK_NAME
    if not lock.exists():
        return None
    pid = _lock_pid(lock)
    return pid if pid and pid != os.getpid() and _pid_alive(pid) else None


def lock_is_stale(run_dir: Path) -> bool:
    """True when ``RUN/.lock`` names a pid that is no live process (its writer was killed)."""
    lock = Path(run_dir) / LOCK_NAME
    if not lock.exists():
        return False
    pid = _lock_pid(lock)
    return bool(pid) and not _pid_alive(pid)


def _locked_error(run_dir: Path, pid: int) -> RunLockedError:
    return RunLockedError(
        f"{run_dir} is in use by process {pid}",
        f"wait for it to finish, or remove {Path(run_dir) / LOCK_NAME} if that process is gone",
    )


def _place_lock(lock: Path) -> bool:
    """Create ``lock`` holding our pid, atomically; False if a lock file already exists.

    The pid is written to a private file that is then hard-linked into place (the link fails
    when a lock exists), so no reader ever sees an empty lock and mistakes it for a stale one.
    Filesystems without hard links fall back to O_EXCL create + write.
    """
    pid = str(os.getpid()).encode()
    fd, tmp = tempfile.mkstemp(prefix=f"{LOCK_NAME}.", suffix=".tmp", dir=lock.parent)
    try:
        os.write(fd, pid)
        os.close(fd)
        try:
            os.link(tmp, lock)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            pass
    finally:
        Path(tmp).unlink(missing_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, pid)
    os.close(fd)
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` while writing; a second writer is refused, a stale lock is taken over."""
    lock = Path(run_dir) / LOCK_NAME
    for _ in range(2):
        if _place_lock(lock):
            break
        pid = lock_holder(run_dir)
        if pid:
            raise _locked_error(run_dir, pid)
        lock.unlink(missing_ok=True)  # stale: its process is gone
    else:  # pragma: no cover - lost a race twice
        raise RunLockedError(f"could not lock {run_dir}")
    try:
        _remove_dead_temp_files(Path(run_dir))
        yield
    finally:
        lock.unlink(missing_ok=True)


#: Files only the trainer (the lock holder) writes; eval/tune write elsewhere without the lock.
TRAINER_FILES = ("run.json", "history.csv", "config.resolved.yaml", "env.json", "checkpoints/best.pt",
                 "checkpoints/last.pt", LOCK_NAME)


def _remove_dead_temp_files(run_dir: Path) -> None:
    """Delete ``.<name>.*.tmp`` files of trainer-owned names: with the lock held, they can only be
    left by a writer that was killed mid-write (a partial checkpoint can be hundreds of MB)."""
    for name in TRAINER_FILES:
        path = run_dir / name
        for tmp in path.parent.glob(f".{path.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


#: What a fresh start in an existing run folder would overwrite or make inconsistent.
RESULT_PATHS = ("checkpoints/best.pt", "checkpoints/last.pt", "history.csv", "predictions", "metrics",
                "decision.json", "test_access.log")


def refuse_fresh_start(run_dir: Path) -> None:
    """A new (not resumed) run may not start in a folder another process is writing, nor in one
    holding results: it would overwrite best.pt and history.csv and leave predictions, metrics
    and decision.json of the old weights behind. A folder with only config/env/run.json (a run
    stopped before its first checkpoint) may be reused."""
    run_dir = Path(run_dir)
    pid = lock_holder(run_dir)
    if pid:
        raise _locked_error(run_dir, pid)
    found = [name for name in RESULT_PATHS if (run_dir / name).exists()]
    if found:
        raise UsageError(
            f"{run_dir} already holds a run ({', '.join(found)}); a new run there would overwrite it",
            f"resume it with `fxbench train --resume {run_dir}`, or choose another --run-dir",
        )


def check_selection_metric(metric: str, val_labels: Any) -> None:
    """Refuse, before training, a selection metric the val split cannot define: with no
    fractured (or no intact) val image it is NaN at every epoch and no best.pt is ever kept."""
    import numpy as np

    labels = np.asarray(val_labels).astype(bool)
    n_pos, n = int(labels.sum()), int(labels.size)
    needs_pos = {"dice_pos", "iou_pos", "roc_auc_presence", "average_precision_presence", "auc_plus_dice_pos"}
    needs_neg = {"roc_auc_presence", "auc_plus_dice_pos"}  # a NaN part makes a composite NaN
    missing = "fractured" if metric in needs_pos and n_pos == 0 else (
        "non-fractured" if metric in needs_neg and n_pos == n else None)
    if missing:
        raise ConfigError(
            f"train.selection_metric={metric} is undefined (NaN) on this val split: it has no {missing} "
            f"image ({n_pos} of {n} fractured), so no best checkpoint could ever be chosen",
            "set train.selection_metric=neg_loss (or dice), or prepare a split whose val has both classes",
        )


def code_version() -> str:
    """fxbench version plus the git commit when running from a checkout."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, timeout=5, check=False,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = ""
    return f"{__version__}+g{sha}" if sha else __version__


def environment(device: Any) -> dict[str, Any]:
    import numpy
    import torch

    env: dict[str, Any] = {
        "fxbench": code_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "device": str(device),
        "cuda_available": torch.cuda.is_available(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import timm

        env["timm"] = timm.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def update_run_json(run_dir: Path, **fields: Any) -> dict[str, Any]:
    path = Path(run_dir) / "run.json"
    data = read_json(path) if path.is_file() else {}
    data.update(fields)
    write_json_atomic(path, data)
    return data


def finished_training(run_dir: Path) -> dict[str, Any] | None:
    """``run.json`` of a run whose training finished (status ``finished`` and a last.pt), else None."""
    run_dir = Path(run_dir)
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return None
    try:
        info = read_json(run_dir / "run.json")
    except (OSError, ValueError, FxbenchError):
        return None
    return info if isinstance(info, dict) and info.get("status") == "finished" else None
