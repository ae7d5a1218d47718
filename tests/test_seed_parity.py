"""Seed parity (issue 13): presence modes mean / pred_area, weighted ensemble, blur kernel, label
smoothing, split ratios, registry names in ``config validate``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fxbench.artifacts.predictions import Predictions, load_predictions, save_predictions
from fxbench.cli.app import app
from fxbench.config import AugmentConfig, LossConfig, load_config
from fxbench.errors import ConfigError, UsageError
from fxbench.evaluate import evaluate_predictions, mean_scores, pred_area_scores
from fxbench.select.ensemble import average_predictions, load_member, run_ensemble, weight_grid
from fxbench.select.tune import tune_predictions

runner = CliRunner()


# --------------------------------------------------------------------------------------
# presence modes


def _two_images() -> tuple[np.ndarray, np.ndarray]:
    """Two 4x4 maps: image 0 stretched (box = whole square), image 1 letterboxed into columns 1..2."""
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0] = [[0.9, 0.6, 0.1, 0.0],
                [0.5, 0.2, 0.0, 0.0],
                [0.0, 0.0, 0.0, 0.7],
                [0.0, 0.0, 0.0, 0.0]]
    probs[1, :, 1:3] = [[0.25, 0.75], [0.5, 0.0], [0.0, 0.0], [0.0, 1.0]]
    boxes = np.array([[0, 0, 4, 4], [0, 1, 4, 2]])
    return probs, boxes


def test_mean_is_the_mean_probability_over_the_image() -> None:
    probs, boxes = _two_images()
    got = mean_scores(probs, boxes)
    # by hand: (0.9+0.6+0.1+0.5+0.2+0.7)/16 = 3.0/16; (0.25+0.75+0.5+1.0)/8 = 2.5/8
    np.testing.assert_allclose(got, [3.0 / 16, 2.5 / 8], rtol=1e-6)


def test_pred_area_is_the_share_of_pixels_at_or_above_the_threshold() -> None:
    probs, boxes = _two_images()
    # t = 0.5: image 0 has 0.9, 0.6, 0.5, 0.7 -> 4/16; image 1 has 0.75, 0.5, 1.0 -> 3/8
    np.testing.assert_allclose(pred_area_scores(probs, boxes, 0.5), [4 / 16, 3 / 8])
    # t = 0.65: 0.9, 0.7 -> 2/16; 0.75, 1.0 -> 2/8
    np.testing.assert_allclose(pred_area_scores(probs, boxes, 0.65), [2 / 16, 2 / 8])
    # min_component 2 drops the lone 0.7 of image 0 and the lone 1.0 of image 1
    np.testing.assert_allclose(pred_area_scores(probs, boxes, 0.5, min_component=2), [3 / 16, 2 / 8])


def test_inference_writes_the_mean_source() -> None:
    from fxbench.models.inference import predict_tensors

    class Const(torch.nn.Module):
        """Mask logits = logit(image / 255) (a known probability map), no head."""

        def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
            return torch.logit(x.clamp(1e-4, 1 - 1e-4)), None

    images = torch.zeros((2, 1, 4, 4), dtype=torch.uint8)
    images[0, 0] = 128
    images[1, 0, :, 1:3] = 64
    boxes = np.array([[0, 0, 4, 4], [0, 1, 4, 2]])
    probs, pres = predict_tensors(Const(), images, boxes)
    assert set(pres) == {"max", "topk_mean", "mean"}
    np.testing.assert_allclose(pres["mean"], [128 / 255, 64 / 255], rtol=2e-3)
    np.testing.assert_array_equal(pres["mean"], mean_scores(probs, boxes))


def _pred_with_area_signal(split: str = "val") -> Predictions:
    """Positives have large blobs of moderate probability, negatives one bright pixel: ``max``
    cannot rank them (every image peaks at 0.9), ``pred_area`` at t = 0.5 ranks them perfectly."""
    n, s = 8, 16
    probs = np.zeros((n, s, s), np.float32)
    masks = np.zeros((n, s, s), np.uint8)
    for i in range(n):
        probs[i, 0, 0] = 0.9
        if i % 2 == 0:
            probs[i, 4:12, 4:12] = 0.6
            masks[i, 4:12, 4:12] = 1
    labels = masks.reshape(n, -1).any(axis=1)
    return Predictions(
        image_ids=[f"{split}{i}" for i in range(n)], probs=probs, masks=masks, boxes=np.tile([0, 0, s, s], (n, 1)),
        native_hw=np.full((n, 2), s), labels=labels, meta={"split": split, "tta": "none"},
        presence={"max": probs.reshape(n, -1).max(axis=1), "mean": mean_scores(probs, np.tile([0, 0, s, s], (n, 1)))},
    )


def test_pred_area_is_selectable_in_evaluate_and_tuned_like_the_others() -> None:
    pred = _pred_with_area_signal()
    m = evaluate_predictions(pred, {"threshold": 0.5, "presence_source": "pred_area"}, bootstrap=0)
    assert m["presence_source"] == "pred_area" and m["roc_auc_presence"] == pytest.approx(1.0)
    assert m["presence_sources"]["max"]["roc_auc_presence"] == pytest.approx(0.5)
    res = tune_predictions(pred, val_sha256=None, thresholds=[0.5, 0.7])
    assert res.decision.threshold == 0.5
    assert res.decision.presence_source in ("mean", "pred_area")  # both rank perfectly; mean comes first
    res = tune_predictions(pred, val_sha256=None, thresholds=[0.5, 0.7], presence_sources=["max", "pred_area"])
    assert res.decision.presence_source == "pred_area"
    # the area threshold (share of pixels) is frozen with it: 64/256 for positives
    assert res.decision.presence_threshold == pytest.approx(64 / 256 + 1 / 256)


def test_presence_modes_in_the_config() -> None:
    for mode in ("mean", "pred_area"):
        assert load_config(overrides=[f"eval.presence_source={mode}"]).eval.presence_source == mode
    with pytest.raises(ConfigError):
        load_config(overrides=["eval.presence_source=area_pred"])


# --------------------------------------------------------------------------------------
# weighted ensemble


def _run(root: Path, name: str, seed: int) -> Path:
    from test_select import make_pred

    run = root / name
    save_predictions(run / "predictions" / "val.npz", make_pred("val", seed))
    save_predictions(run / "predictions" / "test.npz", make_pred("test", seed + 100))
    return run


def test_weighted_ensemble_equals_the_weighted_mean(tmp_path: Path) -> None:
    runs = [_run(tmp_path, n, s) for n, s in (("a", 1), ("b", 2), ("c", 3))]
    members = [load_member(r, "val") for r in runs]
    w = [0.5, 0.3, 0.2]
    ens = average_predictions(members, "val", weights=w)
    want = sum(np.float64(wi) * m.pred.probs.astype(np.float64) for wi, m in zip(w, members, strict=True))
    np.testing.assert_allclose(ens.probs.astype(np.float64), want, atol=1e-3)  # float16 storage
    np.testing.assert_allclose(ens.presence["head"], sum(wi * m.pred.presence["head"] for wi, m in zip(w, members, strict=True)), rtol=1e-6)
    # weights are normalised; weight 1 on one member is that member
    one = average_predictions(members, "val", weights=[0, 2, 0])
    np.testing.assert_array_equal(one.probs, members[1].pred.probs)
    with pytest.raises(UsageError):
        average_predictions(members, "val", weights=[1, -1, 1])


def test_ensemble_cli_weights_are_recorded_in_the_decision(tmp_path: Path) -> None:
    runs = [_run(tmp_path, n, s) for n, s in (("a", 4), ("b", 5))]
    out = tmp_path / "ens"
    res = runner.invoke(app, ["ensemble", *map(str, runs), "--out", str(out), "--bootstrap", "0", "--weights", "3,1"])
    assert res.exit_code == 0, res.output
    d = json.loads((out / "decision.json").read_text())
    assert d["weights"] == {"a": 0.75, "b": 0.25} and d["weight_rule"] == "user-fixed"
    pa, pb = (load_predictions(r / "predictions" / "test.npz") for r in runs)
    pe = load_predictions(out / "predictions" / "test.npz")  # the frozen weights are applied to test
    np.testing.assert_allclose(pe.probs, 0.75 * pa.probs.astype(np.float32) + 0.25 * pb.probs.astype(np.float32), atol=1e-3)


def test_ensemble_weights_chosen_on_val_over_a_grid(tmp_path: Path) -> None:
    assert weight_grid(2, 0.5) == [(0.5, 0.5), (1.0, 0.0), (0.0, 1.0)]
    assert len(weight_grid(3, 0.25)) == 15
    good, bad = _run(tmp_path, "good", 6), tmp_path / "bad"
    rng = np.random.default_rng(0)
    noise = load_predictions(good / "predictions" / "val.npz")
    noise.probs = rng.uniform(0, 1, noise.probs.shape).astype(np.float16)  # a useless member
    save_predictions(bad / "predictions" / "val.npz", noise)
    summary = run_ensemble([good, bad], tmp_path / "ens", bootstrap=0, test=False, weight_step=0.5)
    d = summary["decision"]
    assert d["weights"] == {"good": 1.0, "bad": 0.0} and d["weight_rule"].startswith("val grid, step 0.5")
    rows = (tmp_path / "ens" / "tune" / "weights.csv").read_text().splitlines()
    assert rows[0].startswith("w_good,w_bad,threshold,selection_score") and len(rows) == 4
    with pytest.raises(UsageError):
        run_ensemble([good, bad], tmp_path / "ens2", test=False, weights=[1, 1], weight_step=0.5)


# --------------------------------------------------------------------------------------
# augment blur, label smoothing


def test_blur_kernel_is_the_seeds_gaussian() -> None:
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    from fxbench.data.augment import blur_radius, gaussian_blur

    assert blur_radius(5, 1.5) == 2 and blur_radius(None, 1.5) == 5
    x = torch.rand((2, 1, 20, 24), generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.7, 1.3])
    got = gaussian_blur(x, sigma, torch.tensor([True, False]), 2)
    want = tv_blur(x[:1], [5, 5], [0.7, 0.7])
    torch.testing.assert_close(got[:1], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1:], x[1:])  # off: untouched
    assert AugmentConfig(blur_kernel=5).blur_kernel == 5
    with pytest.raises(ValueError, match="odd"):
        AugmentConfig(blur_kernel=4)


def test_augmenter_uses_blur_kernel() -> None:
    from fxbench.data.augment import Augmenter

    x = torch.zeros((1, 1, 33, 33))
    x[0, 0, 16, 16] = 1.0
    m = torch.zeros_like(x)
    cfg = {"hflip_prob": 0.0, "vflip_prob": 0.0, "rotate_prob": 0.0, "blur_prob": 1.0,
           "blur_sigma_min": 1.5, "blur_sigma_max": 1.5}
    small, _ = Augmenter(AugmentConfig(**cfg, blur_kernel=5))(x, m, torch.tensor([False]), torch.Generator().manual_seed(0))
    wide, _ = Augmenter(AugmentConfig(**cfg))(x, m, torch.tensor([False]), torch.Generator().manual_seed(0))
    assert (small[0, 0] > 0).sum() == 25 and (wide[0, 0] > 0).sum() == 121


def test_presence_label_smoothing() -> None:
    from fxbench.train.losses import SegmentationLoss

    logits = torch.full((2, 1, 4, 4), -3.0)
    logits[0, 0, 1, 1] = 2.0
    masks = torch.zeros((2, 1, 4, 4))
    masks[0, 0, 1, 1] = 1.0
    head = torch.tensor([1.5, -0.5])
    base = {"bce_weight": 0.0, "dice_weight": 0.0, "presence_weight": 1.0, "presence_source": "head"}
    plain, _ = SegmentationLoss(LossConfig(**base))(logits, masks, head)
    smooth, _ = SegmentationLoss(LossConfig(**base, presence_label_smoothing=0.02))(logits, masks, head)
    p = torch.sigmoid(head)
    y = torch.tensor([1 - 0.01, 0.01])  # y(1 - s) + s/2
    want = -(y * p.log() + (1 - y) * (1 - p).log()).mean()
    torch.testing.assert_close(smooth, want)
    assert not torch.isclose(plain, smooth)


# --------------------------------------------------------------------------------------
# split ratios


def test_split_ratios_change_the_seed_and_grouped_counts() -> None:
    from fxbench.data.splits import grouped_split, seed_split

    rows = [(f"n{i}", 0) for i in range(100)] + [(f"p{i}", 1) for i in range(20)]
    counts = lambda sp: {k: sum(v == k for v in sp.values()) for k in ("train", "val", "test")}  # noqa: E731
    assert counts(seed_split(rows, 42)) == {"train": 84, "val": 18, "test": 18}
    assert counts(seed_split(rows, 42, 0.8, 0.1)) == {"train": 96, "val": 12, "test": 12}
    assert counts(grouped_split([(i, lab, i) for i, lab in rows], 42, 0.6, 0.2)) == {"train": 72, "val": 24, "test": 24}
    with pytest.raises(ConfigError, match="train \\+ val < 1"):
        seed_split(rows, 42, 0.9, 0.1)


def test_prepare_ratios_through_the_cli_are_recorded(tmp_path: Path, synth_archive: Path) -> None:
    out = tmp_path / "prep"
    base = ["prepare", "--archive", str(synth_archive), "--out", str(out), "--cache-size", "32", "--workers", "1"]
    res = runner.invoke(app, [*base, "--split-mode", "seed", "--train-ratio", "0.5", "--val-ratio", "0.25"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "prepare_report.json").read_text())
    assert report["split_ratios"] == {"train": 0.5, "val": 0.25, "test": 0.25}
    c = report["split_counts"]
    assert c["train"] == pytest.approx(report["images"] * 0.5, abs=2)
    # a rerun without ratios keeps the folder's split
    again = runner.invoke(app, base)
    assert again.exit_code == 0, again.output
    assert json.loads((out / "prepare_report.json").read_text())["split_counts"] == c
    bad = runner.invoke(app, [*base, "--split-mode", "official", "--train-ratio", "0.6"])
    assert bad.exit_code == 2 and "seed and grouped" in bad.output


# --------------------------------------------------------------------------------------
# config validate: registry names


def test_config_validate_rejects_seed_model_name_with_a_suggestion(tmp_path: Path) -> None:
    cfg = tmp_path / "seed.yaml"
    cfg.write_text("model: {name: simple_unet}\n")
    res = runner.invoke(app, ["config", "validate", str(cfg)])
    assert res.exit_code == 2
    assert "unknown model 'simple_unet'" in res.output and "did you mean 'unet'" in res.output
    cfg.write_text("model: {name: unet_duel}\n")
    res = runner.invoke(app, ["config", "validate", str(cfg)])
    assert res.exit_code == 2 and "did you mean 'unet_dual'" in res.output


def test_config_validate_checks_timm_encoders_offline(tmp_path: Path) -> None:
    cfg = tmp_path / "enc.yaml"
    cfg.write_text("model: {name: timm_unet, encoder: resnet343}\n")
    res = runner.invoke(app, ["config", "validate", str(cfg)])
    assert res.exit_code == 2 and "unknown timm model 'resnet343'" in res.output and "resnet34" in res.output
    cfg.write_text("model: {name: timm_unet, encoder: resnet18}\n")
    assert runner.invoke(app, ["config", "validate", str(cfg)]).exit_code == 0


# --------------------------------------------------------------------------------------
# docs/seed_parity.md: every seed config key has a row, every fxbench key named exists

#: Every key the seed's trainers read (seed spec 2.1), as the table writes them.
SEED_KEYS = [
    "seed", "task", "dataset.name", "dataset.manifest", "input.image_size", "input.preserve_aspect",
    "model.name", "model.in_channels", "model.out_channels", "model.base_channels", "model.pretrained",
    "model.pretrained_backbone", "model.cls_hidden", "model.cls_dropout", "model.context_channels",
    "model.pseudo_depth", "model.depth_reduce", "model.pseudo_mode", "model.use_depth_bias",
    "loss.name", "loss.bce_weight", "loss.dice_weight", "loss.dice_positive_only", "loss.pos_weight",
    "loss.focal_weight", "loss.tversky_weight", "loss.focal_gamma", "loss.focal_alpha", "loss.tversky_alpha",
    "tversky_beta", "tversky_gamma", "loss.presence_bce_weight", "loss.presence_bce_warmup_epochs",
    "training.batch_size", "training.num_workers", "training.epochs", "training.learning_rate", "training.min_lr",
    "training.weight_decay", "training.optimizer", "training.betas", "training.beta1", "training.beta2",
    "training.eps", "training.momentum", "training.nesterov", "training.scheduler", "training.max_lr",
    "pct_start", "div_factor", "final_div_factor", "training.onecycle_pct_start", "onecycle_anneal_strategy",
    "onecycle_div_factor", "onecycle_final_div_factor", "training.grad_clip_norm", "training.ema.enabled",
    "ema.decay", "ema.warmup_steps", "training.balanced_sampling", "training.augment", "training.selection_metric",
    "training.max_train_batches", "training.max_eval_batches", "training.patch.enabled", "patch.size",
    "patch.positive_prob", "patch.hard_negative_prob", "patch.hard_negative_quantile",
    "positive_aug_multiplier", "affine_prob", "affine_max_degrees", "affine_translate_frac", "affine_scale_min",
    "affine_scale_max", "jitter_prob", "brightness", "contrast", "gamma_prob", "gamma_min", "gamma_max",
    "autocontrast_prob", "blur_prob", "blur_kernel", "blur_sigma_min", "blur_sigma_max", "noise_prob",
    "noise_std_min", "noise_std_max", "cutout_prob", "cutout_frac_min", "cutout_frac_max",
    "evaluation.threshold", "evaluation.tta", "evaluation.presence_score_mode", "evaluation.presence_topk_frac",
    "evaluation.presence_threshold", "runtime.device", "runtime.amp", "threshold_tuning.enabled",
    "final_eval.use_full_eval",
]  # fmt: skip


def _table_rows() -> list[list[str]]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "seed_parity.md").read_text(encoding="utf-8")
    rows = []
    for line in text.splitlines():
        if line.startswith("| `"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


def test_seed_parity_table_has_every_seed_key() -> None:
    import re

    seed_column = " ".join(r[0] for r in _table_rows())
    named = set(re.findall(r"`([^`]+)`", seed_column))
    listed = {part.strip() for item in named for part in item.split(",")}
    missing = [k for k in SEED_KEYS if k not in listed and f"`{k}`" not in seed_column]
    assert not missing, missing


def test_seed_parity_table_names_only_real_fxbench_keys() -> None:
    import re

    from fxbench.config import all_keys

    keys = set(all_keys())
    sections = "data|model|loss|sampler|augment|optim|schedule|train|eval|runtime"
    named = {t for r in _table_rows() for t in re.findall(r"`([^`]+)`", r[1])}
    wrong = [t for t in named if re.fullmatch(rf"({sections})\.[a-z_.]+", t) and t not in keys]
    assert not wrong, wrong
