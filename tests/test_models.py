"""Model registry: forward contract of every entry, errors, offline and local-weights routes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fxbench.config import ModelConfig
from fxbench.errors import ConfigError, OfflineError
from fxbench.models import build_model, list_models, new_head_prefixes

# Small widths keep the whole module fast; the architecture (not the width) is under test.
SMALL = {"base_channels": 8, "decoder_channels": [32, 16, 16, 8, 8], "cls_hidden": 16}

CASES = [
    ("unet", None),
    ("unet_dual", None),
    ("deeplabv3_resnet50", None),
    ("deeplabv3_resnet50_dual", None),
    ("deeplabv3_resnet101", None),
    ("deeplabv3_resnet101_dual", None),
    ("timm_unet", "resnet34"),
    ("timm_unet", "efficientnet_b0"),
    ("timm_unet", "convnext_tiny"),
    ("classifier", "resnet18"),
]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # No test may reach the network, and none may find weights in the user's caches.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(0)


def test_cases_cover_registry() -> None:
    assert sorted({name for name, _ in CASES}) == list_models()


@pytest.mark.parametrize(("name", "encoder"), CASES, ids=[f"{n}-{e}" if e else n for n, e in CASES])
def test_forward_contract(name: str, encoder: str | None) -> None:
    cfg = ModelConfig(name=name, encoder=encoder or "resnet34", **SMALL)
    model = build_model(cfg, in_channels=1).eval()
    batch = 1 if "resnet101" in name else 2  # resnet101 is the slow one; one image is enough
    with torch.no_grad():
        mask_logits, presence = model(torch.rand(batch, 1, 64, 64))
    assert mask_logits.shape == (batch, 1, 64, 64)
    assert mask_logits.dtype == torch.float32
    assert torch.isfinite(mask_logits).all()
    expects_head = name.endswith("_dual") or name in ("timm_unet", "classifier")
    assert model.has_presence_head is expects_head
    if expects_head:
        assert presence is not None and presence.shape == (batch,)
    else:
        assert presence is None
    assert model.segments is (name != "classifier")
    heads = new_head_prefixes(model)
    assert heads == (("presence_head.",) if expects_head and name != "classifier" else ())
    keys = model.state_dict().keys()
    for prefix in heads:
        assert any(k.startswith(prefix) for k in keys)


def test_classifier_mask_is_presence_broadcast() -> None:
    model = build_model(ModelConfig(name="classifier", encoder="resnet18"), 1).eval()
    with torch.no_grad():
        mask_logits, presence = model(torch.rand(2, 1, 64, 48))
    assert mask_logits.shape == (2, 1, 64, 48)
    assert torch.equal(mask_logits.amax(dim=(1, 2, 3)), presence)
    assert torch.equal(mask_logits.amin(dim=(1, 2, 3)), presence)


def test_unet_dual_trains_both_heads_and_odd_sizes() -> None:
    model = build_model(ModelConfig(name="unet_dual", **SMALL), 1).train()
    mask_logits, presence = model(torch.rand(2, 1, 60, 44))  # not divisible by 8
    assert mask_logits.shape == (2, 1, 60, 44)
    assert presence is not None
    (mask_logits.mean() + presence.sum()).backward()
    assert model.presence_head.mlp[0].weight.grad is not None
    assert model.enc1[0].weight.grad is not None


def test_unet_widths_follow_base_channels() -> None:
    model = build_model(ModelConfig(name="unet_dual", base_channels=4, cls_hidden=7), 3)
    assert model.enc1[0].weight.shape == (4, 3, 3, 3)
    assert model.bottleneck[0].weight.shape[0] == 32
    assert model.presence_head.mlp[0].weight.shape == (7, 32)


def test_timm_unet_without_head_and_three_channels() -> None:
    cfg = ModelConfig(
        name="timm_unet", encoder="resnet18", presence_head=False, decoder_channels=[16, 8]
    )
    model = build_model(cfg, 3).eval()
    with torch.no_grad():
        mask_logits, presence = model(torch.rand(1, 3, 64, 64))
    assert mask_logits.shape == (1, 1, 64, 64)  # 2 decoder stages stop at 1/8: upsampled at the end
    assert presence is None and not model.has_presence_head
    assert new_head_prefixes(model) == ()


def test_new_head_prefixes_sees_through_wrappers() -> None:
    model = build_model(ModelConfig(name="unet_dual", **SMALL), 1)

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.module = inner

    assert new_head_prefixes(Wrapper(model)) == ("presence_head.",)


def test_unknown_model_name_lists_names_with_suggestion() -> None:
    with pytest.raises(ValueError, match="did you mean 'unet_dual'"):  # the schema refuses it first
        ModelConfig(name="unet_duel")
    with pytest.raises(ConfigError) as info:  # and build_model still does for an unchecked config
        build_model(ModelConfig.model_construct(**{**ModelConfig().model_dump(), "name": "unet_duel"}), 1)
    text = str(info.value)
    assert "unet_duel" in text and "did you mean 'unet_dual'" in text
    for name in list_models():
        assert name in text
    assert info.value.exit_code == 2


def test_unknown_timm_encoder_is_config_error() -> None:
    with pytest.raises(ConfigError, match="resnet3400"):
        build_model(ModelConfig(name="timm_unet", encoder="resnet3400"), 1)


def test_too_many_decoder_stages_is_config_error() -> None:
    with pytest.raises(ConfigError, match="decoder_channels"):
        build_model(ModelConfig(name="timm_unet", encoder="resnet18", decoder_channels=[8] * 6), 1)


@pytest.mark.parametrize("name", ["timm_unet", "classifier", "deeplabv3_resnet50"])
def test_pretrained_offline_names_weights_key(name: str) -> None:
    with pytest.raises(OfflineError) as info:
        build_model(ModelConfig(name=name, encoder="resnet18", pretrained=True), 1)
    assert "model.weights" in str(info.value)
    assert "\n" not in str(info.value)
    assert info.value.exit_code == 5


def test_pretrained_offline_uses_cached_hub_file(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    # Lay out a Hugging Face cache entry the way hf_hub_download leaves it.
    snap = tmp_path / "hf" / "hub" / "models--timm--resnet18.a1_in1k"
    (snap / "refs").mkdir(parents=True)
    (snap / "refs" / "main").write_text("abc123")
    (snap / "snapshots" / "abc123").mkdir(parents=True)
    source = timm.create_model("resnet18")
    save_file(source.state_dict(), str(snap / "snapshots" / "abc123" / "model.safetensors"))
    model = build_model(
        ModelConfig(name="timm_unet", encoder="resnet18", pretrained=True, **SMALL), 1
    )
    assert torch.equal(model.encoder.layer1[0].conv1.weight, source.layer1[0].conv1.weight)


def test_unet_refuses_pretrained() -> None:
    with pytest.raises(ConfigError, match="pretrained"):
        build_model(ModelConfig(name="unet", pretrained=True), 1)


def test_missing_weights_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.weights"):
        build_model(
            ModelConfig(name="timm_unet", encoder="resnet18", weights=tmp_path / "nope.pth"), 1
        )


def test_weights_file_safetensors_adapts_first_conv(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(source.state_dict(), str(path))
    model = build_model(ModelConfig(name="timm_unet", encoder="resnet18", weights=path, **SMALL), 1)
    enc = model.encoder
    assert enc.conv1.weight.shape == (64, 1, 7, 7)
    # timm's adaptation to one channel sums the RGB kernels.
    assert torch.allclose(enc.conv1.weight, source.conv1.weight.sum(1, keepdim=True), atol=1e-6)
    assert torch.equal(enc.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_weights_file_pth_for_classifier(tmp_path: Path) -> None:
    import timm

    source = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    model = build_model(ModelConfig(name="classifier", encoder="resnet18", weights=path), 1)
    assert torch.equal(model.backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert model.backbone.fc.weight.shape == (1, 512)  # the 1000-class head is not loaded


def test_weights_file_for_other_architecture_is_refused(tmp_path: Path) -> None:
    import timm

    path = tmp_path / "effnet.pth"
    torch.save(timm.create_model("efficientnet_b0").state_dict(), path)
    with pytest.raises(ConfigError, match="size mismatch"):
        build_model(ModelConfig(name="timm_unet", encoder="resnet18", weights=path, **SMALL), 1)


def test_weights_file_with_foreign_key_names_is_refused(tmp_path: Path) -> None:
    import timm

    # Names that match nothing would load nothing at all under timm's non-strict loading.
    path = tmp_path / "renamed.pth"
    torch.save({f"net.{k}": v for k, v in timm.create_model("resnet18").state_dict().items()}, path)
    with pytest.raises(ConfigError, match="matches only 0 of"):
        build_model(ModelConfig(name="timm_unet", encoder="resnet18", weights=path, **SMALL), 1)


def test_deeplab_weights_file_from_resnet_backbone(tmp_path: Path) -> None:
    import torchvision

    source = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)
    model = build_model(ModelConfig(name="deeplabv3_resnet50_dual", weights=path), 1)
    assert torch.allclose(
        model.backbone.conv1.weight, source.conv1.weight.sum(1, keepdim=True), atol=1e-6
    )
    assert torch.equal(model.backbone.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_failed_download_is_offline_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import timm.models._builder as timm_builder

    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_network(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    # Both download routes fail the way they do without a network; nothing is fetched.
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm_builder, "load_state_dict_from_hf", no_network)
    monkeypatch.setattr(timm_builder, "load_state_dict_from_url", no_network)
    for name in ("deeplabv3_resnet50", "timm_unet"):
        with pytest.raises(OfflineError, match="download failed.*URLError") as info:
            build_model(ModelConfig(name=name, encoder="resnet18", pretrained=True, **SMALL), 1)
        assert "model.weights" in str(info.value)
