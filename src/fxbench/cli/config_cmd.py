"""`fxbench config show|validate|keys`: inspect the resolved configuration."""

from __future__ import annotations

from pathlib import Path

import typer

from fxbench.cli.common import console, handle_errors, out


def complete_set_key(incomplete: str) -> list[str]:
    """Shell completion for --set: schema keys with a trailing '='."""
    from fxbench.config import all_keys

    return [f"{k}=" for k in all_keys() if k.startswith(incomplete)]


def config_options():
    config = typer.Option(None, "--config", "-c", help="YAML config file.", exists=False)
    sets = typer.Option(
        None, "--set", "-s", help="Override: section.key=value (repeatable).", autocompletion=complete_set_key
    )
    return config, sets


_CFG, _SET = config_options()

config_app = typer.Typer(help="Show, validate and list configuration keys.", no_args_is_help=True)


@config_app.command("show")
@handle_errors
def show(config: Path | None = _CFG, set_: list[str] | None = _SET) -> None:
    """Print the resolved config (defaults < file < FXBENCH_* env < --set) as YAML."""
    from fxbench.config import load_config

    cfg = load_config(config, set_ or [])
    out.print(cfg.to_yaml(), end="", markup=False)


@config_app.command("validate")
@handle_errors
def validate(config: Path = typer.Argument(..., help="YAML config to check.")) -> None:
    """Check a config file against the schema and the registries (model.name; model.encoder
    of timm-based models, offline); exit 2 with the first problem."""
    from fxbench.config import load_config
    from fxbench.models.registry import check_registry_names

    cfg = load_config(config, [], environ={})
    check_registry_names(cfg.model)
    console.print(f"ok: {config} is a valid fxbench config")


@config_app.command("keys")
@handle_errors
def keys() -> None:
    """List every dotted config key (what --set accepts)."""
    from fxbench.config import all_keys

    for key in all_keys():
        out.print(key, markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
