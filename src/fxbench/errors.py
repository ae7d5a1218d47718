"""Typed errors. The core raises these; the CLI turns them into one line and an exit code.

Exit codes (documented in `fxbench --help`):
    0 success, 1 runtime failure, 2 usage or config error, 3 data missing or not prepared,
    4 protocol violation (sealed test), 5 offline and a needed file is missing.
"""

from __future__ import annotations


class FxbenchError(Exception):
    """Base class for errors a user can fix. ``str(err)`` is the one line shown."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(FxbenchError):
    """Unknown key, wrong type, impossible value."""

    exit_code = 2


class UsageError(FxbenchError):
    exit_code = 2


class DataError(FxbenchError):
    """Missing, corrupt or malformed input data (archive, image, annotation, cache)."""

    exit_code = 3


class ProtocolError(FxbenchError):
    """An action that would break the sealed-test protocol."""

    exit_code = 4


class OfflineError(FxbenchError):
    """Something must be downloaded but there is no network, or offline mode is on."""

    exit_code = 5


class CheckpointError(FxbenchError):
    """A checkpoint that cannot be trusted or does not match the run."""

    exit_code = 1


class RunLockedError(FxbenchError):
    """Another process holds the run folder."""

    exit_code = 1


class TrainingDivergedError(FxbenchError):
    """NaN or Inf loss."""

    exit_code = 1
