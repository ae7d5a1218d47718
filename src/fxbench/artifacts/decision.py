"""The decision file: every free parameter of a test evaluation, frozen on val.

``RUN/decision.json`` is written by ``fxbench tune`` (and by ``ensemble``/``blend`` in their
output folders) and read by ``eval --split test`` through :mod:`fxbench.select.seal`. It names
the predictions it was chosen on by their sha256, so a decision can never silently outlive
the val predictions it was tuned on.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fxbench.errors import DataError
from fxbench.io import write_json_atomic

#: Name of the decision file inside a run (or ensemble/blend) folder.
DECISION_FILE = "decision.json"

#: Record of the tuning, written beside the decision at tune time (relative to the folder).
TUNE_RECORD = "tune/record.json"
#: Keys left out of the content digest (the digest itself, and when the file was written).
_NOT_CONTENT = ("content_sha256", "created")


def utc_now() -> str:
    """ISO-8601 UTC timestamp with seconds precision (what every fxbench record uses)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


class Decision(BaseModel):
    """Frozen operating point of a run, ensemble or blend.

    Extra keys are kept (``extra="allow"``): ensembles add ``members``, blends add ``alpha``,
    ``beta``, ``gamma`` and ``rule``, so one reader serves every producer.
    """

    model_config = ConfigDict(extra="allow")

    threshold: float = Field(..., gt=0.0, lt=1.0, description="Pixel probability threshold (prob >= t).")
    presence_source: str = Field("auto", description="Presence score key in the predictions artifact.")
    presence_threshold: float = Field(0.5, description="Image is positive when score >= this (scores need not be probabilities for peers).")
    min_component: int = Field(0, ge=0, description="Predicted components smaller than this are dropped.")
    tta: str | None = Field(None, description="TTA mode of the predictions the decision applies to.")
    selected_on: Literal["val", "user"] = "val"
    selection_metric: str | None = None
    presence_rule: str | None = Field(None, description="How presence_threshold was chosen (f1 or youden).")
    val_predictions_sha256: str | None = None
    source: Literal["tune", "user-fixed"] = "tune"
    checkpoint: str | None = Field(None, description="Checkpoint file the val predictions came from (best.pt, last.pt).")
    checkpoint_sha256: str | None = Field(None, description="sha256 of that checkpoint (from the val artifact's meta).")
    run: dict[str, Any] | None = Field(None, description="Identity of the folder tuned in: name, config_sha256, started.")
    member_runs: list[dict[str, Any]] | None = Field(
        None, description="Ensembles/blends: each member's name, path, val predictions and checkpoint sha256.")
    content_sha256: str | None = Field(None, description="Digest of every other field (see content_digest).")
    created: str = Field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, extras included (what ``evaluate_predictions`` receives)."""
        return self.model_dump(mode="json")

    def sha256(self) -> str:
        """sha256 of the canonical JSON (sorted keys, compact separators).

        Canonical rather than file bytes so a user-fixed decision that never touched the disk and
        a decision read back from its file hash the same way.
        """
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def content_digest(self) -> str:
        """sha256 of the canonical JSON of the content: every field but ``content_sha256`` and
        ``created``. Any edit of a value (threshold, presence, sha256s, members) changes it."""
        body = {k: v for k, v in self.to_dict().items() if k not in _NOT_CONTENT}
        blob = json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()

    def sealed(self) -> Decision:
        """A copy whose ``content_sha256`` is the digest of its content (what tune writes)."""
        copy = self.model_copy(deep=True)
        copy.content_sha256 = copy.content_digest()
        return copy


def run_identity(folder: str | Path) -> dict[str, Any]:
    """What identifies a run (or ensemble/blend) folder: its name, and from ``run.json`` the
    config sha256 and start time when it has one. Survives moving the folder; a retrained or
    different run differs."""
    folder = Path(folder)
    ident: dict[str, Any] = {"name": folder.name}
    info = folder / "run.json"
    if info.is_file():
        try:
            data = json.loads(info.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            data = {}
        if isinstance(data, dict):
            for key in ("config_sha256", "started", "seed"):
                if data.get(key) is not None:
                    ident[key] = data[key]
    return ident


def write_tune_record(folder: str | Path, decision: Decision, **extra: Any) -> Path:
    """Write ``FOLDER/tune/record.json``: the decision's content digest and what it was chosen
    from, at tune time. The seal accepts a tuned decision only when this record names it."""
    folder = Path(folder)
    record = {
        "time": utc_now(),
        "decision_content_sha256": decision.content_sha256 or decision.content_digest(),
        "val_predictions_sha256": decision.val_predictions_sha256,
        "checkpoint": decision.checkpoint,
        "checkpoint_sha256": decision.checkpoint_sha256,
        "run": decision.run,
        "member_runs": decision.member_runs,
        **extra,
    }
    path = folder / TUNE_RECORD
    write_json_atomic(path, record)
    return path


def read_tune_record(folder: str | Path) -> dict[str, Any] | None:
    """``FOLDER/tune/record.json`` as a dict, or None when absent or unreadable."""
    path = Path(folder) / TUNE_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def write_decision(path: str | Path, decision: Decision) -> Path:
    """Write ``decision`` atomically to ``path`` (a file, or a folder that gets decision.json)."""
    path = Path(path)
    if path.is_dir():
        path = path / DECISION_FILE
    write_json_atomic(path, decision.to_dict())
    return path


def read_decision(path: str | Path) -> Decision:
    """Read and validate a decision file; missing or malformed -> :class:`DataError` (exit 3)."""
    path = Path(path)
    if path.is_dir():
        path = path / DECISION_FILE
    if not path.is_file():
        raise DataError(f"decision file not found: {path}", "run `fxbench tune RUN` to write one")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON (line {err.lineno}): {err.msg}") from err
    if not isinstance(data, dict):
        raise DataError(f"{path}: a decision file must hold a JSON object")
    try:
        return Decision.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "<top level>"
        raise DataError(f"{path}: invalid decision, {where}: {first['msg']}", "re-run `fxbench tune RUN`") from err
