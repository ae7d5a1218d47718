"""Unit tests of fxbench.config: precedence, typed overrides, error lines, hashing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fxbench.config import (
    Config,
    all_keys,
    config_from_dict,
    env_overrides,
    load_config,
    parse_override,
    parse_value,
    read_yaml,
)
from fxbench.errors import ConfigError


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------- precedence


def test_precedence_set_over_env_over_file_over_default(tmp_path: Path) -> None:
    cfg_file = _write(tmp_path / "c.yaml", "train:\n  epochs: 5\n  batch_size: 8\noptim:\n  lr: 0.01\n")
    env = {"FXBENCH_TRAIN__EPOCHS": "7", "FXBENCH_OPTIM__LR": "0.02"}

    assert load_config(environ={}).train.epochs == 20  # default
    assert load_config(cfg_file, environ={}).train.epochs == 5  # file > default
    cfg = load_config(cfg_file, environ=env)
    assert (cfg.train.epochs, cfg.optim.lr) == (7, 0.02)  # env > file
    assert cfg.train.batch_size == 8  # untouched file value survives
    cfg = load_config(cfg_file, ["train.epochs=9"], environ=env)
    assert (cfg.train.epochs, cfg.optim.lr) == (9, 0.02)  # --set > env, per key


def test_later_set_wins_and_base_is_lowest(tmp_path: Path) -> None:
    cfg = load_config(None, ["train.epochs=3", "train.epochs=4"], environ={}, base={"train": {"epochs": 2, "seed": 1}})
    assert (cfg.train.epochs, cfg.train.seed) == (4, 1)
    cfg_file = _write(tmp_path / "c.yaml", "train:\n  seed: 5\n")
    assert load_config(cfg_file, environ={}, base={"train": {"seed": 1}}).train.seed == 5


def test_env_overrides_ignore_non_config_variables() -> None:
    env = {"FXBENCH_HOME": "/x", "FXBENCH_DEBUG": "1", "FXBENCH_SAMPLER__PATCH__SIZE": "96", "OTHER__X": "1"}
    assert env_overrides(env) == [("sampler.patch.size", 96)]


# --------------------------------------------------------------------------- typed values


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1e-3", 0.001),
        ("3E-4", 0.0003),
        ("0.5", 0.5),
        ("12", 12),
        ("true", True),
        ("false", False),
        ("null", None),
        ("[1,2]", [1, 2]),
        ("[0.9, 0.99]", [0.9, 0.99]),
        ("hv", "hv"),
        ("resnet34", "resnet34"),
        ("efficientnet_b0", "efficientnet_b0"),
        ("", None),
    ],
)
def test_parse_value(text: str, expected: object) -> None:
    value = parse_value(text)
    assert value == expected
    assert type(value) is type(expected)


def test_parse_value_never_evaluates_code() -> None:
    assert parse_value("__import__('os').getcwd()") == "__import__('os').getcwd()"
    assert parse_value("!!python/object/apply:os.getcwd []") == "!!python/object/apply:os.getcwd []"


def test_overrides_are_typed_by_the_schema() -> None:
    cfg = load_config(None, ["optim.lr=1e-3", "augment.enabled=false", "optim.betas=[0.8,0.9]", "train.epochs=3"], environ={})
    assert cfg.optim.lr == 0.001 and isinstance(cfg.optim.lr, float)
    assert cfg.augment.enabled is False
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)


def test_text_keys_keep_the_text_as_typed() -> None:
    # Numbers-looking text must stay text for str/path keys (a run named 2024, a folder '1e5').
    cfg = load_config(None, ["name=2024", "model.encoder=1e5", "data.prepared=/data/1e5"], environ={})
    assert cfg.name == "2024"
    assert cfg.model.encoder == "1e5"
    assert cfg.data.prepared == Path("/data/1e5")
    assert load_config(None, ["model.weights=null"], environ={}).model.weights is None
    assert parse_override("name=007") == ("name", "007")
    assert env_overrides({"FXBENCH_MODEL__ENCODER": "123"}) == [("model.encoder", "123")]


def test_override_without_equals_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"--set 'train\.epochs' has no '='"):
        load_config(None, ["train.epochs"], environ={})


# --------------------------------------------------------------------------- error lines


def test_unknown_nested_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["sampler.patch.sizee=64"], environ={})
    assert str(info.value) == "--set sampler.patch.sizee: unknown key 'sampler.patch.sizee'; did you mean 'sampler.patch.size'?"
    assert info.value.exit_code == 2


def test_unknown_section_and_file_key_suggestions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'optmi'.*did you mean 'optim'"):
        load_config(None, ["optmi.lr=1"], environ={})
    bad = _write(tmp_path / "bad.yaml", "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, environ={})
    assert str(info.value) == f"{bad}: unknown key 'optim.lrr'; did you mean 'optim.lr'?"
    with pytest.raises(ConfigError, match=r"environment FXBENCH_TRAIN__EPOCH: unknown key 'train.epoch'; did you mean 'train.epochs'"):
        load_config(None, environ={"FXBENCH_TRAIN__EPOCH": "3"})


def test_bad_override_value_names_the_set_flag() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["optim.lr=-1"], environ={})
    assert str(info.value) == "--set optim.lr: Input should be greater than 0"
    # A section-level rule is blamed on the override that touched the section.
    with pytest.raises(ConfigError, match=r"^--set augment\.gamma_min: augment: gamma_min must be <= gamma_max"):
        load_config(None, ["augment.gamma_min=2"], environ={})
    # The whole-config rule (patch <= image size) names the last override.
    with pytest.raises(ConfigError, match=r"^--set sampler\.patch\.size: sampler\.patch\.size \(512\) must be <= data\.image_size \(256\)$"):
        load_config(None, ["sampler.patch.enabled=true", "sampler.patch.size=512"], environ={})


def test_bad_file_value_names_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path / "bad.yaml", "optim:\n  lr: -1\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad, environ={})
    assert str(info.value) == f"{bad}: optim.lr: Input should be greater than 0"


def test_invalid_yaml_reports_the_line(tmp_path: Path) -> None:
    bad = _write(tmp_path / "broken.yaml", "train:\n  epochs: 3\noptim: [1\n")
    with pytest.raises(ConfigError) as info:
        read_yaml(bad)
    assert str(info.value).startswith(f"{bad}: line 4 is not valid YAML")
    assert info.value.exit_code == 2


def test_non_mapping_top_level_and_missing_file(tmp_path: Path) -> None:
    as_list = _write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"top level must be a mapping of sections, got list"):
        load_config(as_list, environ={})
    with pytest.raises(ConfigError, match=r"config file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml", environ={})
    empty = _write(tmp_path / "empty.yaml", "")
    assert load_config(empty, environ={}) == Config()


def test_image_size_must_be_a_multiple_of_32() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.image_size=100"], environ={})
    assert str(info.value) == "--set data.image_size: image_size must be a multiple of 32 (got 100); try 96"
    assert load_config(None, ["data.image_size=288"], environ={}).data.image_size == 288


def test_selection_metric_typo_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown selection metric 'dice_pso'; did you mean 'dice_pos'\?"):
        config_from_dict({"train": {"selection_metric": "dice_pso"}})


# --------------------------------------------------------------------------- keys, hashing


def test_all_keys_are_dotted_leaves() -> None:
    keys = all_keys()
    assert "optim.lr" in keys and "sampler.patch.size" in keys and "train.ema.decay" in keys and "name" in keys
    assert "sampler.patch" not in keys and "optim" not in keys
    assert len(keys) == len(set(keys))


def test_sha256_is_stable_and_key_order_independent() -> None:
    a = config_from_dict({"train": {"epochs": 3, "seed": 1}, "optim": {"lr": 0.01}})
    b = config_from_dict({"optim": {"lr": 0.01}, "train": {"seed": 1, "epochs": 3}})
    assert a.sha256() == b.sha256()
    assert len(a.sha256()) == 64 and int(a.sha256(), 16) >= 0
    assert a.sha256() != config_from_dict({"train": {"epochs": 4, "seed": 1}, "optim": {"lr": 0.01}}).sha256()
    # A round trip through the written YAML (what a run folder keeps) hashes the same.
    import yaml

    assert config_from_dict(yaml.safe_load(a.to_yaml())).sha256() == a.sha256()


def test_null_words_only_clear_optional_text_keys() -> None:
    assert load_config(None, ["name=null"], environ={}).name is None
    assert load_config(None, ["name=none"], environ={}).name == "none"  # YAML's null is 'null' or '~'
    assert load_config(None, ["model.encoder=null"], environ={}).model.encoder == "null"
