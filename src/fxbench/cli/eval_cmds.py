"""Verbs of this group are added here as they become real (no stub verbs)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's verbs to ``app``."""
