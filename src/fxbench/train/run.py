"""Run folders: creation, lock file, environment record, status."""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fxbench._version import __version__
from fxbench.errors import RunLockedError
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


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``RUN/.lock`` while writing; a second writer is refused, a stale lock is taken over."""
    lock = Path(run_dir) / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise RunLockedError(
                    f"{run_dir} is in use by process {pid}",
                    f"wait for it to finish, or remove {lock} if that process is gone",
                ) from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
    else:  # pragma: no cover - lost a race twice
        raise RunLockedError(f"could not lock {run_dir}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        lock.unlink(missing_ok=True)


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
