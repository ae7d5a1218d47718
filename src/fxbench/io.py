"""Atomic file writes, hashing and small JSON/CSV helpers used by every stage.

Every artifact is written to a temporary file in the destination folder and renamed into
place, so a reader (or a crash) never sees a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fxbench.errors import FxbenchError

#: errno values that mean "no room": ENOSPC (disk full) and EDQUOT (quota exceeded).
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", 122)}


def _write_error(dest: Path, err: OSError) -> FxbenchError:
    """One line for an OSError while writing ``dest`` (the previous file, if any, is intact)."""
    if err.errno in _NO_SPACE:
        return FxbenchError(f"disk full while writing {dest}", "free some space; the previous file is intact")
    return FxbenchError(f"cannot write {dest}: {err.strerror or err}",
                        "check the folder exists and is writable; the previous file is intact")


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``dest``; on success rename it over ``dest``.

    On any exception the temporary file is removed and ``dest`` is left untouched.
    A full disk (``OSError`` ENOSPC/EDQUOT) becomes a one-line "disk full" :class:`FxbenchError`;
    an ``OSError`` while creating the temporary file or renaming it (read-only folder,
    permissions) a one-line "cannot write".
    A crash (kill -9) can leave a ``.<name>.*.tmp`` file behind, never a half-written ``dest``.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
        os.close(fd)
    except OSError as err:
        raise _write_error(dest, err) from err
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if err.errno in _NO_SPACE:
            raise _write_error(dest, err) from err
        raise  # not necessarily about the write (the body may read inputs): keep the caller's error
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    try:
        os.replace(tmp_path, dest)
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        raise _write_error(dest, err) from err


def write_bytes_atomic(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())


def write_text_atomic(dest: str | os.PathLike[str], text: str) -> None:
    write_bytes_atomic(dest, text.encode("utf-8"))


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return obj.as_posix()
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    """JSON with NaN/Inf written as null (valid JSON for every reader)."""
    plain = json.loads(json.dumps(obj, default=_json_default))
    return json.dumps(_nan_to_none(plain), indent=2, sort_keys=False) + "\n"


def write_json_atomic(dest: str | os.PathLike[str], obj: Any) -> None:
    write_text_atomic(dest, dumps_json(obj))


def read_json(path: str | os.PathLike[str]) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise FxbenchError(f"file not found: {path}") from err
    except json.JSONDecodeError as err:
        raise FxbenchError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}") from err


def write_csv_atomic(
    dest: str | os.PathLike[str], rows: Sequence[dict[str, Any]], fieldnames: Sequence[str]
) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    write_text_atomic(dest, buf.getvalue())


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
