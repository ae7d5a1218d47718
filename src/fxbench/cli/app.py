"""The `fxbench` Typer app: global options, error handling, verb registration.

Verb modules import only typer/rich at module level; torch and friends are imported inside
the verbs, so `fxbench --help`, `--version` and completion stay fast.
"""

from __future__ import annotations

import importlib
import sys

import typer

from fxbench._version import __version__

HELP = """fxbench: a locked, reproducible benchmark of fracture segmentation and presence on
FracAtlas X-rays.

Pipeline: download -> prepare -> train -> eval (val) -> tune (val) -> eval (test, sealed) -> report.

Exit codes: 0 ok, 1 runtime failure, 2 usage or config error, 3 data missing or invalid,
4 sealed-test protocol violation, 5 offline and a needed file is missing, 130 interrupted
(Ctrl-C or SIGTERM; an interrupted `train` continues with `fxbench train --resume RUN`).
Set FXBENCH_DEBUG=1 or pass --debug for full tracebacks.
"""

app = typer.Typer(
    name="fxbench",
    help=HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

from fxbench.cli.common import STATE as _STATE  # noqa: E402

# One module per group of verbs; each defines register(app). Order sets --help order.
VERB_MODULES = (
    "fxbench.cli.data_cmds",
    "fxbench.cli.demo_cmd",
    "fxbench.cli.train_cmd",
    "fxbench.cli.eval_cmds",
    "fxbench.cli.select_cmds",
    "fxbench.cli.compare_cmds",
    "fxbench.cli.report_cmd",
    "fxbench.cli.predict_cmd",
    "fxbench.cli.bench_cmd",
    "fxbench.cli.misc_cmds",
    "fxbench.cli.config_cmd",
)


def _version_text() -> str:
    """``fxbench X.Y.Z``: no torch import, so it answers at once (torch's version and CUDA are
    in ``fxbench doctor``)."""
    return f"fxbench {__version__}"


def _version_cb(ctx: typer.Context, value: bool) -> None:
    # Eager callbacks also run while the shell asks for completions (resilient parsing);
    # printing the version (and importing torch) there would corrupt the completion reply.
    if value and not ctx.resilient_parsing:
        typer.echo(_version_text())
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", "-V", callback=_version_cb, is_eager=True, help="Show fxbench's version and exit (torch and CUDA: fxbench doctor)."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors.", envvar="FXBENCH_DEBUG"),
) -> None:
    _STATE["debug"] = debug


for _mod in VERB_MODULES:
    importlib.import_module(_mod).register(app)


COMPLETION_SHELLS = ("bash", "zsh", "fish", "powershell", "pwsh")
_COMPLETION_FLAGS = ("--show-completion", "--install-completion")


def _completion_for_named_shell(argv: list[str]) -> int | None:
    """Handle ``--show-completion SHELL`` / ``--install-completion SHELL`` (also ``=SHELL``).

    Typer's flags detect the running shell and silently ignore a shell name, so
    ``fxbench --show-completion zsh`` from bash printed a bash script, and where detection
    fails (CI, containers) nothing worked. Returns an exit code, or None when argv is not
    such a request (then Typer handles it as usual).
    """
    if not argv or len(argv) > 2:
        return None
    flag, _, shell = argv[0].partition("=")
    if flag not in _COMPLETION_FLAGS or (shell and len(argv) > 1):
        return None
    shell = shell or (argv[1] if len(argv) == 2 else "")
    if not shell:
        return None  # no shell named: Typer detects it
    if shell not in COMPLETION_SHELLS:
        print(
            f"error: {flag}: unknown shell '{shell}' (use one of: {', '.join(COMPLETION_SHELLS)})",
            file=sys.stderr,
        )
        return 2
    from typer.completion import get_completion_script, install

    complete_var = "_FXBENCH_COMPLETE"  # what Typer derives from the program name
    if flag == "--show-completion":
        typer.echo(get_completion_script(prog_name="fxbench", complete_var=complete_var, shell=shell))
        return 0
    shell, path = install(shell=shell, prog_name="fxbench", complete_var=complete_var)
    typer.echo(f"{shell} completion installed in {path}; it takes effect in a new terminal")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Console entry point: runs the app and turns known errors into one line + exit code."""
    from fxbench.cli.common import run_app

    args = list(sys.argv[1:] if argv is None else argv)
    rc = _completion_for_named_shell(args)
    if rc is not None:
        sys.exit(rc)
    run_app(app, args, _STATE)


if __name__ == "__main__":  # pragma: no cover
    main()
