"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically.

Loading uses ``torch.load(weights_only=True)``: no pickled code can run, so a checkpoint from
a stranger is safe to open. Every checkpoint carries a format tag and its config hash.
"""

from __future__ import annotations

import os
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from fxbench.errors import CheckpointError
from fxbench.io import atomic_path

FORMAT = "fxbench-ckpt-1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (with the format tag added) to ``path`` via tmp + fsync + rename.

    ``torch.save`` gets a Python file object, not a path: given a path, its C++ writer turns a
    full disk into ``RuntimeError: unexpected pos ...``; through a file object the ``OSError``
    (ENOSPC) reaches :func:`fxbench.io.atomic_path`, which reports "disk full" and keeps the
    previous checkpoint. The fsync makes the renamed file durable, not just complete.
    """
    data = canonical({"format": FORMAT, **payload})
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(data, fh)
            fh.flush()
            os.fsync(fh.fileno())


def canonical(obj: Any) -> Any:
    """``obj`` with every string interned (containers rebuilt, tensors kept as they are).

    The pickle inside a checkpoint refers back to a string it already wrote only when it is the
    same object, so equal payloads whose strings came from different places (a literal default,
    a YAML file, a job spec sent to a worker process) gave different bytes. With equal strings
    one object, a checkpoint's bytes depend on its content alone: a run launched in a worker or
    on SLURM writes the same file as the same run trained in-process.
    """
    if isinstance(obj, str):
        return sys.intern(obj)
    if isinstance(obj, dict):
        out = {canonical(k): canonical(v) for k, v in obj.items()}
        if type(obj) is not dict:  # OrderedDict (a state_dict): keep its type and _metadata
            out = type(obj)(out)
            if hasattr(obj, "_metadata"):
                out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, list):
        return [canonical(v) for v in obj]
    if isinstance(obj, tuple) and type(obj) is tuple:
        return tuple(canonical(v) for v in obj)
    return obj


def _refusal_reason(err: BaseException) -> tuple[bool, str]:
    """(pickled code or objects?, short reason) from torch's weights-only unpickler message."""
    text = str(err)
    match = re.search(r"GLOBAL ([\w.]+)", text)
    if match:
        return True, f"it would import {match.group(1)}"
    for pattern in (r"Unsupported operand \d+", r"invalid load key[^\n]*", r"Unsupported class [\w.]+"):
        found = re.search(pattern, text)
        if found:
            return False, found.group(0).rstrip(".")
    return False, type(err).__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; one-line CheckpointError for anything untrusted or foreign.

    Nothing in the file runs: ``weights_only=True`` refuses any pickled global (a class, a
    function such as ``os.system``) before calling it. Besides the format tag, the checkpoint
    must hold its weights as a dict of tensors under ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", "check the run folder or pass --which last")
    try:
        with warnings.catch_warnings():
            # torch warns on stderr about pickle protocols of foreign files; the error below says it all.
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        code, reason = _refusal_reason(err)
        if code:
            raise CheckpointError(
                f"refused to load {path}: {reason}, i.e. it contains pickled code or objects, not just tensors",
                "nothing in it was run; only load checkpoints written by fxbench",
            ) from err
        raise CheckpointError(f"refused to load {path}: not a tensors-only checkpoint ({reason})",
                              "only load checkpoints written by fxbench") from err
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, KeyError, EOFError... for junk
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__})",
                              "the file is damaged, truncated or not a torch checkpoint") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an fxbench checkpoint (format {data.get('format') if isinstance(data, dict) else '?'!r})",
            f"expected format {FORMAT}",
        )
    model = data.get("model")
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        raise CheckpointError(f"{path} has no model weights (a dict of tensors under 'model')",
                              "the file is damaged or was not written by fxbench")
    return data


def state_dict_sha(state: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def load_weights_into(
    model: torch.nn.Module, state: dict[str, torch.Tensor], allowed_missing: tuple[str, ...] = (), source: str = ""
) -> list[str]:
    """Strict load except keys under ``allowed_missing`` prefixes (new heads on a warm start).

    The seed loaded non-strictly and could silently leave layers random; here any other
    missing or unexpected key, or a shape mismatch, is an error.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad_missing = [k for k in missing if not k.startswith(allowed_missing)]
    if bad_missing or unexpected:
        parts = []
        if bad_missing:
            parts.append(f"missing {len(bad_missing)} keys (e.g. {bad_missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (e.g. {unexpected[0]})")
        raise CheckpointError(
            f"weights in {source or 'checkpoint'} do not fit the model: {'; '.join(parts)}",
            "check model.name and its widths match the checkpoint's run",
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"weights in {source or 'checkpoint'}: {key} has shape {tuple(value.shape)}, model wants {tuple(own[key].shape)}"
            )
    model.load_state_dict(state, strict=False)
    return missing
