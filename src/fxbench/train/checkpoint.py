"""Checkpoints: plain dicts of tensors and JSON-able values, written atomically.

Loading uses ``torch.load(weights_only=True)``: no pickled code can run, so a checkpoint from
a stranger is safe to open. Every checkpoint carries a format tag and its config hash.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from fxbench.errors import CheckpointError
from fxbench.io import atomic_path

FORMAT = "fxbench-ckpt-1"


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` (with the format tag added) to ``path`` via tmp + rename."""
    data = {"format": FORMAT, **payload}
    with atomic_path(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; one-line CheckpointError for anything untrusted or foreign."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", "check the run folder or pass --which last")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refused to load {path}: it contains pickled code or objects, not just tensors",
            "only load checkpoints written by fxbench",
        ) from err
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__})") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an fxbench checkpoint (format {data.get('format') if isinstance(data, dict) else '?'!r})",
            f"expected format {FORMAT}",
        )
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
