"""Shared CLI helpers: error rendering, consoles, config options."""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from fxbench.errors import FxbenchError

#: Global flags set by the root callback (--debug).
STATE: dict[str, Any] = {"debug": False}

#: Human output goes to stderr; machine output (--json) to stdout.
#: soft_wrap: a message line is never broken at the terminal width (paths stay copyable and
#: greppable); tables still fit the width.
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def error_line(err: BaseException) -> str:
    return f"error: {err}"


def _debug_on(state: dict[str, Any], argv: list[str]) -> bool:
    return state.get("debug") or "--debug" in argv or os.environ.get("FXBENCH_DEBUG") == "1"


def run_app(app: typer.Typer, argv: list[str] | None, state: dict[str, Any]) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        rc = app(args=argv, prog_name="fxbench", standalone_mode=False)
    except SystemExit:
        raise
    except FxbenchError as err:
        if _debug_on(state, argv):
            traceback.print_exc()
        print(error_line(err), file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as err:  # noqa: BLE001 - the last line of defence
        _handle_other(err, argv, state)
    sys.exit(rc if isinstance(rc, int) else 0)


def _handle_other(err: Exception, argv: list[str], state: dict[str, Any]) -> None:
    # Typer's own usage errors (bad option, missing argument) carry exit_code and show().
    show = getattr(err, "show", None)
    code = getattr(err, "exit_code", None)
    if callable(show) and isinstance(code, int):
        show()
        sys.exit(code)
    if type(err).__name__ == "Abort":
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    if _debug_on(state, argv):
        traceback.print_exc()
    else:
        print(f"error: {type(err).__name__}: {err} (rerun with --debug for the traceback)", file=sys.stderr)
    sys.exit(1)


def handle_errors(fn):
    """Decorator for verbs: within CliRunner tests, also map FxbenchError to exit codes."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FxbenchError as err:
            if STATE.get("debug") or os.environ.get("FXBENCH_DEBUG") == "1":
                traceback.print_exc()
            print(error_line(err), file=sys.stderr)
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            # Typer would turn it into a silent exit 130; say what happened, in the usual form.
            print("error: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper


def verb_settings(config: Path | None, set_: list[str] | None, **flags: Any) -> Any:
    """The resolved config for a verb with shortcut flags: ``--config``, then ``--set``, then the
    flags (``select.threshold_step=...`` for ``--step``...); unset flags leave the schema's value."""
    from fxbench.config import load_config

    overrides = list(set_ or [])
    for key, value in flags.items():
        if value is None or value == []:
            continue
        text = "[" + ",".join(str(v) for v in value) + "]" if isinstance(value, list) else str(value)
        overrides.append(f"{key}={text}")
    return load_config(config, overrides)
