"""The predictions artifact: ``RUN/predictions/<split>.npz``.

One file holds everything needed to score a split without a network: per-image probability maps
at cache resolution, the ground-truth masks at the same resolution, the letterbox geometry to go
back to native size, image-level presence scores from every available source, labels and
provenance. ``tune``, ``ensemble``, ``blend``, ``report`` and ``verify`` read only this file.

File format (a zip of ``.npy`` members, readable with ``numpy.load(path, allow_pickle=False)``):

=====================  ==================  ==================================================
key                    dtype, shape        meaning
=====================  ==================  ==================================================
``image_ids``          ``<U*`` [N]         image ids, same order as every array
``probs``              float16 [N,S,S]     pixel fracture probability (letterboxed square)
``masks``              uint8 [N,S,S]       ground truth at cache resolution, 0/1
``boxes``              int32 [N,4]         top, left, height, width of the image in the square
``native_hw``          int32 [N,2]         native height, width
``labels``             uint8 [N]           1 when the cache-resolution mask is non-empty
``presence_<source>``  float32 [N]         presence score per source (``head``, ``max``, ...)
``meta_json``          ``<U*`` scalar      JSON object: split, tta, run, checkpoint/cache/split sha256
``format``             ``<U*`` scalar      ``fxbench-predictions-1`` (format marker)
=====================  ==================  ==================================================

The zip members carry a fixed timestamp, so saving the same predictions twice gives the same
bytes and the same :func:`predictions_sha256` (a decision file pins the val predictions by hash).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fxbench.errors import DataError
from fxbench.io import atomic_path, sha256_file

FORMAT = "fxbench-predictions-1"
PRESENCE_PREFIX = "presence_"
_REQUIRED = ("image_ids", "probs", "masks", "boxes", "native_hw", "labels", "meta_json")
# A fixed member timestamp (the zip epoch) makes the file bytes a function of the content only.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass
class Predictions:
    """Predictions of one model (or ensemble/blend) on one split, at cache resolution.

    Fields are coerced to the artifact dtypes on construction, so an in-memory object scores
    exactly like the file it would be saved as (probabilities are float16 either way).

    Attributes:
        image_ids: N image ids.
        probs: float16 [N,S,S] pixel probabilities in [0, 1] (letterboxed square).
        masks: uint8 [N,S,S] ground truth, 0/1.
        boxes: int32 [N,4] (top, left, height, width) of the image inside the square.
        native_hw: int32 [N,2] native (height, width).
        presence: source name -> float32 [N] image-level score (``head``, ``max``, ``topk_mean``...).
        labels: uint8 [N] image label (1 = ground-truth mask non-empty at cache resolution).
        meta: JSON-able provenance (split, tta, run, checkpoint/cache/split sha256, ...).
    """

    image_ids: list[str]
    probs: np.ndarray
    masks: np.ndarray
    boxes: np.ndarray
    native_hw: np.ndarray
    presence: dict[str, np.ndarray]
    labels: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image_ids = [str(i) for i in self.image_ids]
        self.probs = np.asarray(self.probs, dtype=np.float16)
        masks = np.asarray(self.masks)
        # Accept 0/255 masks too; the artifact stores 0/1.
        self.masks = (masks > 0).astype(np.uint8) if masks.dtype != np.uint8 or masks.max(initial=0) > 1 else masks
        self.boxes = np.asarray(self.boxes, dtype=np.int32)
        self.native_hw = np.asarray(self.native_hw, dtype=np.int32)
        self.labels = (np.asarray(self.labels) > 0).astype(np.uint8)
        self.presence = {str(k): np.asarray(v, dtype=np.float32) for k, v in self.presence.items()}
        self.meta = dict(self.meta)
        _validate(self)

    @property
    def n(self) -> int:
        """Number of images."""
        return len(self.image_ids)

    @property
    def size(self) -> int:
        """Cache edge S in pixels."""
        return int(self.probs.shape[-1])

    @property
    def presence_sources(self) -> list[str]:
        return list(self.presence)


def _validate(p: Predictions, where: str = "predictions") -> None:
    n = len(p.image_ids)
    problems = []
    if p.probs.ndim != 3 or p.probs.shape[1] != p.probs.shape[2]:
        problems.append(f"probs must be [N,S,S], got {list(p.probs.shape)}")
    if p.masks.shape != p.probs.shape:
        problems.append(f"masks shape {list(p.masks.shape)} != probs shape {list(p.probs.shape)}")
    if p.probs.shape[:1] != (n,):
        problems.append(f"probs has {p.probs.shape[0] if p.probs.ndim else 0} maps for {n} image ids")
    if p.boxes.shape != (n, 4):
        problems.append(f"boxes must be [N,4], got {list(p.boxes.shape)}")
    if p.native_hw.shape != (n, 2):
        problems.append(f"native_hw must be [N,2], got {list(p.native_hw.shape)}")
    if p.labels.shape != (n,):
        problems.append(f"labels must be [N], got {list(p.labels.shape)}")
    for source, scores in p.presence.items():
        if scores.shape != (n,):
            problems.append(f"presence '{source}' must be [N], got {list(scores.shape)}")
    if len(set(p.image_ids)) != n:
        problems.append("image_ids are not unique")
    if problems:
        raise DataError(f"{where}: {'; '.join(problems)}", "re-create it with `fxbench eval`")


def _set_level(info: zipfile.ZipInfo, level: int) -> None:
    # ZipInfo has __slots__; the attribute is `compress_level` from py3.13, `_compresslevel` before.
    name = "compress_level" if hasattr(info, "compress_level") else "_compresslevel"
    setattr(info, name, level)


def save_predictions(path: str | os.PathLike[str], p: Predictions) -> Path:
    """Write ``p`` to ``path`` (npz, atomic, deterministic bytes). Returns the path.

    Probabilities are stored as float16, masks/labels as uint8, presence scores as float32.
    """
    path = Path(path)
    _validate(p)
    bad = [s for s in p.presence if not s or not s.replace("_", "").isalnum()]
    if bad:
        raise DataError(f"presence source names must be alphanumeric/underscore, got {bad}")
    try:
        meta_json = json.dumps(p.meta, sort_keys=True, default=str)
    except (TypeError, ValueError) as err:
        raise DataError(f"predictions meta is not JSON-serialisable: {err}") from err
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT),
        "image_ids": np.array(p.image_ids, dtype=str) if p.image_ids else np.zeros(0, dtype="<U1"),
        "probs": p.probs.astype(np.float16, copy=False),
        "masks": p.masks.astype(np.uint8, copy=False),
        "boxes": p.boxes.astype(np.int32, copy=False),
        "native_hw": p.native_hw.astype(np.int32, copy=False),
        "labels": p.labels.astype(np.uint8, copy=False),
        "meta_json": np.array(meta_json),
    }
    for source in sorted(p.presence):
        arrays[PRESENCE_PREFIX + source] = p.presence[source].astype(np.float32, copy=False)
    with atomic_path(path) as tmp:
        # Written member by member (as numpy.savez does) but with a fixed timestamp and a fast
        # deflate level: the masks shrink ~50x; level 1 costs a fraction of the default's time.
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zf:
            for key, arr in arrays.items():
                info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                _set_level(info, 1)
                with zf.open(info, "w", force_zip64=True) as fh:
                    np.lib.format.write_array(fh, np.asarray(arr, order="C"), allow_pickle=False)
    return path


def load_predictions(path: str | os.PathLike[str]) -> Predictions:
    """Read a predictions artifact written by :func:`save_predictions`.

    Raises:
        DataError: the file is missing, not a readable npz, lacks a required key, or its
            arrays disagree in shape.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"predictions file not found: {path}",
            "run `fxbench eval RUN --split <split>` to write it",
        )
    hint = "the file is damaged or not an fxbench predictions file; re-create it with `fxbench eval`"
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            missing = [k for k in _REQUIRED if k not in keys]
            if missing:
                raise DataError(f"{path}: missing keys {missing}", hint)
            data = {k: npz[k] for k in npz.files}
    except DataError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as err:
        raise DataError(f"{path}: cannot read predictions ({type(err).__name__}: {err})", hint) from err
    if "format" in data and str(data["format"].reshape(-1)[0]) != FORMAT:
        raise DataError(f"{path}: unsupported predictions format {data['format'].reshape(-1)[0]!r} "
                        f"(this fxbench reads {FORMAT})", hint)
    meta_arr = data["meta_json"]
    if meta_arr.size != 1 or meta_arr.dtype.kind != "U":
        raise DataError(f"{path}: meta_json must be one string", hint)
    try:
        meta = json.loads(str(meta_arr.reshape(-1)[0]))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: meta_json is not valid JSON ({err.msg})", hint) from err
    if not isinstance(meta, dict):
        raise DataError(f"{path}: meta_json must be a JSON object", hint)
    presence = {
        k[len(PRESENCE_PREFIX):]: v for k, v in data.items() if k.startswith(PRESENCE_PREFIX)
    }
    try:
        return Predictions(
            image_ids=[str(s) for s in data["image_ids"].tolist()],
            probs=data["probs"],
            masks=data["masks"],
            boxes=data["boxes"],
            native_hw=data["native_hw"],
            presence=presence,
            labels=data["labels"],
            meta=meta,
        )
    except DataError as err:
        raise DataError(f"{path}: {err.message}", hint) from err


def predictions_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of the artifact file's bytes; a decision file records it for val."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file not found: {path}", "run `fxbench eval RUN --split <split>` first")
    return sha256_file(path)


def subset(p: Predictions, indices: np.ndarray | list[int]) -> Predictions:
    """A new :class:`Predictions` with the images at ``indices`` (int positions or a bool mask [N]).

    Order follows ``indices``; ``meta`` is copied and gains ``subset_of_n`` (the parent's N).
    """
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (p.n,):
            raise DataError(f"boolean subset mask has shape {list(idx.shape)}, expected [{p.n}]")
        idx = np.flatnonzero(idx)
    idx = idx.astype(np.int64, copy=False).reshape(-1)
    if idx.size and (idx.min() < -p.n or idx.max() >= p.n):
        raise DataError(f"subset index out of range for {p.n} images")
    meta = dict(p.meta)
    meta.setdefault("subset_of_n", p.n)
    return Predictions(
        image_ids=[p.image_ids[i] for i in idx],
        probs=p.probs[idx],
        masks=p.masks[idx],
        boxes=p.boxes[idx],
        native_hw=p.native_hw[idx],
        presence={k: v[idx] for k, v in p.presence.items()},
        labels=p.labels[idx],
        meta=meta,
    )



def read_ids_and_meta(path: str | os.PathLike[str]) -> tuple[list[str], dict[str, Any]]:
    """The image ids and the meta of an artifact without loading its maps (cheap).

    Raises:
        DataError: the file is missing or not a readable predictions artifact.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"predictions file not found: {path}", "run `fxbench eval RUN --split <split>` first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            ids = [str(s) for s in npz["image_ids"].tolist()]
            meta = json.loads(str(npz["meta_json"].reshape(-1)[0]))
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, json.JSONDecodeError) as err:
        raise DataError(f"{path}: cannot read predictions ({type(err).__name__}: {err})",
                        "re-create it with `fxbench eval`") from err
    return ids, meta if isinstance(meta, dict) else {}
