"""Every recipe in examples/: the model it names is built at its own input size with its own
presence head and loss terms, an unknown model name is refused, and it trains a few steps on
CPU at 64 px (--set overrides that leave its model and loss untouched)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
import yaml
from easy_data import make_easy_prepared
from typer.testing import CliRunner

from fxbench.cli.app import app
from fxbench.config import load_config
from fxbench.models import build_model
from fxbench.train.loop import Trainer
from fxbench.train.losses import SegmentationLoss

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))

# recipe: (model.name, network class, input size, in_channels, presence head, active loss terms)
EXPECTED: dict[str, tuple[str, str, int, int, bool, set[str]]] = {
    "cpu_reduced": ("timm_unet", "TimmUNet", 128, 1, True, {"bce", "dice", "presence"}),
    "deeplabv3_r101": ("deeplabv3_resnet101", "DeepLabV3Seg", 384, 1, False, {"bce", "dice"}),
    "deeplabv3_r50": ("deeplabv3_resnet50", "DeepLabV3Seg", 384, 1, False, {"bce", "dice"}),
    "dual_head_dg_aug": ("unet_dual", "SimpleUNet", 256, 3, True, {"bce", "dice", "presence"}),
    "dual_head_unet": ("unet_dual", "SimpleUNet", 256, 3, True, {"bce", "dice", "presence"}),
    "fxbench_best": ("timm_unet", "TimmUNet", 384, 1, True, {"bce", "dice", "presence"}),
    "modern_deeplab_dual": ("deeplabv3_resnet101_dual", "DeepLabV3Seg", 512, 1, True, {"dice", "focal", "tversky", "presence"}),
    "modern_unet_dual": ("unet_dual", "SimpleUNet", 512, 1, True, {"bce", "dice", "presence"}),
    "patch_hardneg_deeplab": ("deeplabv3_resnet50", "DeepLabV3Seg", 512, 1, False, {"bce", "dice"}),
    "presence_aux_unet": ("unet", "SimpleUNet", 256, 3, False, {"bce", "dice", "presence"}),  # presence from the mask
    "presence_classifier": ("classifier", "PresenceClassifier", 384, 1, True, {"presence"}),
    "seed_baseline_unet": ("unet", "SimpleUNet", 256, 3, False, {"bce", "dice"}),
    "smoke_fast_dev": ("unet_dual", "SimpleUNet", 128, 1, True, {"bce", "dice", "presence"}),
}
IDS = [p.stem for p in EXAMPLES]


@pytest.fixture(scope="module")
def easy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_easy_prepared(tmp_path_factory.mktemp("easy_examples"), n=24, size=64)


def test_every_example_has_expectations() -> None:
    assert len(EXAMPLES) >= 10
    assert set(IDS) == set(EXPECTED), "add the new recipe to EXPECTED (or remove a stale row)"


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_builds_its_model_at_its_input_size(path: Path) -> None:
    name, cls, size, channels, head, terms = EXPECTED[path.stem]
    cfg = load_config(path, [], environ={})
    assert (cfg.model.name, cfg.data.image_size, cfg.data.in_channels) == (name, size, channels)
    net = build_model(cfg.model, in_channels=channels).eval()
    assert type(net).__name__ == cls and bool(net.has_presence_head) is head
    with torch.no_grad():
        mask_logits, presence = net(torch.zeros(1, channels, size, size))
    assert tuple(mask_logits.shape) == (1, 1, size, size)
    assert (presence is not None) is head and (presence is None or tuple(presence.shape) == (1,))
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 2:5, 2:5] = 1
    late = 10**6  # past any presence warm-up
    _, parts = SegmentationLoss(cfg.loss)(torch.zeros(2, 1, 8, 8), masks, torch.zeros(2) if head else None, epoch=late)
    assert set(parts) - {"seg", "total", "presence_weight"} == terms


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_with_an_unknown_model_name_is_refused(path: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["config", "validate", str(path)]).exit_code == 0
    body = yaml.safe_load(path.read_text(encoding="utf-8"))
    body["model"]["name"] = "unet_duall"
    bad = tmp_path / path.name
    bad.write_text(yaml.safe_dump(body), encoding="utf-8")
    result = runner.invoke(app, ["config", "validate", str(bad)])
    assert result.exit_code == 2, result.output
    assert "unet_duall" in result.output and "unet_dual" in result.output.replace("unet_duall", "")


@pytest.mark.parametrize("path", EXAMPLES, ids=IDS)
def test_example_trains_a_few_steps(path: Path, easy: Path, tmp_path: Path) -> None:
    overrides = [
        f"data.prepared={easy}", "data.image_size=64", "train.epochs=1", "train.max_steps_per_epoch=2",
        "train.batch_size=2", "train.eval_batch_size=8", "eval.bootstrap=0", "eval.tta=none", "runtime.device=cpu",
        "runtime.amp=none", "sampler.patch.size=32",
    ]
    cfg = load_config(path, overrides, environ={})
    run = tmp_path / path.stem
    summary = Trainer(cfg, run).run()
    assert (summary["status"], summary["epochs_done"]) == ("finished", 1)
    resolved = yaml.safe_load((run / "config.resolved.yaml").read_text(encoding="utf-8"))
    recipe = load_config(path, [], environ={}).model_dump(mode="json")
    assert resolved["model"] == recipe["model"] and resolved["loss"] == recipe["loss"]  # trained what it names
    with open(run / "history.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 1 and int(rows[0]["step"]) == 2 and math.isfinite(float(rows[0]["train_loss"]))
