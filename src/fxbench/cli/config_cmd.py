"""`fxbench config show|validate|keys`: inspect the resolved configuration."""

from __future__ import annotations

from pathlib import Path

import typer

from fxbench.cli.common import console, handle_errors, out


def complete_set_key(incomplete: str) -> list[str]:
    """Shell completion for --set: schema keys with a trailing '='; after ``key=``, the key's
    values where the schema or a registry knows them (``model.name=`` -> the model registry,
    choices of a Literal key, ``true``/``false`` for flags, ``train.selection_metric=``)."""
    from fxbench.config import all_keys

    if "=" in incomplete:
        key, _, part = incomplete.partition("=")
        return [f"{key}={v}" for v in key_values(key) if v.startswith(part)]
    return [f"{k}=" for k in all_keys() if k.startswith(incomplete)]


def key_values(key: str) -> list[str]:
    """The values ``key`` accepts when they form a short list, else []."""
    import typing

    from fxbench import config as schema
    from fxbench.docs_gen import _literal_values

    if key == "model.name":
        from fxbench.models.registry import list_models

        return list_models()
    if key == "train.selection_metric":
        return list(schema.SELECTION_METRICS)
    model: typing.Any = schema.Config
    *sections, leaf = key.split(".")
    for part in sections:
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = field.annotation
    field = getattr(model, "model_fields", {}).get(leaf)
    if field is None:
        return []
    literal = _literal_values(field.annotation)
    if literal:
        return ["null" if v is None else str(v) for v in literal]
    inner = [a for a in typing.get_args(field.annotation) if a is not type(None)] or [field.annotation]
    return ["true", "false"] if inner == [bool] else []


def complete_split(incomplete: str) -> list[str]:
    """--split of eval: val or test."""
    return [s for s in ("val", "test") if s.startswith(incomplete)]


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
def keys(
    names: bool = typer.Option(False, "--names", help="Bare key names only, one a line (for scripts)."),
    json_out: bool = typer.Option(False, "--json", help="The table as JSON on stdout."),
    grep: str | None = typer.Argument(None, help="Show only keys containing this text (e.g. lr, augment.)."),
) -> None:
    """List every config key (what --set accepts) with its type, default, constraints and
    description; docs/config.md has the same table."""
    import json

    from fxbench.docs_gen import key_table

    rows = [r for r in key_table() if grep is None or grep.lower() in r["key"].lower()]
    if json_out:
        out.print(json.dumps(rows), markup=False)
        return
    if names:
        for r in rows:
            out.print(r["key"], markup=False)
        return
    width = max((len(r["key"]) for r in rows), default=3)
    for r in rows:
        rule = f"; {r['constraints']}" if r["constraints"] else ""
        out.print(f"{r['key']:<{width}}  {r['type']} = {r['default']}{rule}  {r['description']}", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
