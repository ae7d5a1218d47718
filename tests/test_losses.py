"""Loss values on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from fxbench.config import LossConfig
from fxbench.errors import ConfigError
from fxbench.train.losses import (
    SegmentationLoss,
    bce_loss,
    focal_bce_loss,
    focal_tversky_loss,
    presence_from_masks,
    soft_dice_loss,
)

LN2 = math.log(2.0)


def _mask(n: int, on: list[list[tuple[int, int]]], size: int = 4) -> torch.Tensor:
    """``[n, 1, size, size]`` masks with the given (row, col) pixels on, per image."""
    m = torch.zeros(n, 1, size, size)
    for i, pixels in enumerate(on):
        for r, c in pixels:
            m[i, 0, r, c] = 1.0
    return m


FOUR = [(0, 0), (0, 1), (1, 0), (1, 1)]  # 4 of 16 pixels


def test_dice_known_value_at_zero_logits() -> None:
    # p = 0.5 everywhere, 4 positive pixels of 16: D = (2*2)/(8+4) = 1/3.
    loss = soft_dice_loss(torch.zeros(1, 1, 4, 4), _mask(1, [FOUR]), positive_only=True)
    assert loss.item() == pytest.approx(2 / 3, abs=1e-6)


def test_positive_only_dice_ignores_negative_images() -> None:
    target = _mask(2, [FOUR, []])
    logits = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    alone = soft_dice_loss(logits[:1], target[:1], positive_only=True)
    both = soft_dice_loss(logits, target, positive_only=True)
    other = logits.clone()
    other[1] = 9.0  # a confident false positive on the negative image changes nothing
    assert both.item() == pytest.approx(alone.item(), abs=1e-7)
    assert soft_dice_loss(other, target, positive_only=True).item() == pytest.approx(
        alone.item(), abs=1e-7
    )
    # Averaging over all images adds the negative's 1 - eps / (sum p + eps) ~ 1.
    negative_term = 1 - 1e-6 / (16 * torch.sigmoid(torch.tensor(9.0)).item() + 1e-6)
    all_images = soft_dice_loss(other, target, positive_only=False)
    assert all_images.item() == pytest.approx((alone.item() + negative_term) / 2, abs=1e-6)


def test_all_negative_batch_gives_zero_dice_and_tversky_with_graph() -> None:
    logits = torch.randn(3, 1, 4, 4, requires_grad=True)
    target = torch.zeros(3, 1, 4, 4)
    dice = soft_dice_loss(logits, target, positive_only=True)
    tversky = focal_tversky_loss(logits, target, 0.3, 0.7, 1.0, positive_only=True)
    assert dice.item() == 0.0 and tversky.item() == 0.0
    (dice + tversky).backward()  # stays on the graph (DDP needs every rank to backward)
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_dice_without_positive_only_on_empty_target_is_near_one() -> None:
    loss = soft_dice_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), positive_only=False)
    assert loss.item() == pytest.approx(1 - 1e-6 / (8 + 1e-6), abs=1e-7)


def test_bce_pos_weight_value() -> None:
    target = _mask(1, [FOUR])
    # Each pixel costs ln 2 at logit 0; positive pixels are weighted by pos_weight.
    assert bce_loss(torch.zeros(1, 1, 4, 4), target, None).item() == pytest.approx(LN2, abs=1e-6)
    assert bce_loss(torch.zeros(1, 1, 4, 4), target, 3.0).item() == pytest.approx(
        (3 * 4 + 12) * LN2 / 16, abs=1e-6
    )


def test_focal_known_values() -> None:
    target = _mask(1, [FOUR])
    logits = torch.zeros(1, 1, 4, 4)
    # p_t = 0.5 -> (1 - 0.5)^2 * ln 2 per pixel.
    assert focal_bce_loss(logits, target, 2.0, None, None).item() == pytest.approx(
        0.25 * LN2, abs=1e-6
    )
    # alpha_t = 0.25 on the 4 positives, 0.75 on the 12 negatives.
    expected = 0.25 * LN2 * (4 * 0.25 + 12 * 0.75) / 16
    assert focal_bce_loss(logits, target, 2.0, 0.25, None).item() == pytest.approx(
        expected, abs=1e-6
    )
    # gamma 0 is plain BCE.
    assert focal_bce_loss(logits, target, 0.0, None, 3.0).item() == pytest.approx(
        bce_loss(logits, target, 3.0).item()
    )


def test_focal_tversky_known_values() -> None:
    target = _mask(1, [FOUR])
    logits = torch.zeros(1, 1, 4, 4)
    # TP = 2, FP = 6, FN = 2: TI = 2 / (2 + 0.3*6 + 0.7*2) = 2 / 5.2.
    ti = 2 / 5.2
    assert focal_tversky_loss(logits, target, 0.3, 0.7, 1.0, True).item() == pytest.approx(
        1 - ti, abs=1e-6
    )
    assert focal_tversky_loss(logits, target, 0.3, 0.7, 2.0, True).item() == pytest.approx(
        (1 - ti) ** 2, abs=1e-6
    )


def test_focal_tversky_perfect_prediction_has_finite_gradient() -> None:
    target = _mask(1, [FOUR])
    logits = (target * 40 - 20).requires_grad_()
    focal_tversky_loss(logits, target, 0.3, 0.7, 0.75, True).backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("weight", "warmup", "expected"),
    [
        (0.4, 4, [0.1, 0.2, 0.3, 0.4, 0.4, 0.4]),
        (0.4, 0, [0.4] * 6),
        (0.0, 3, [0.0] * 6),
        (1.0, 1, [1.0] * 6),
    ],
)
def test_presence_warmup_per_epoch(weight: float, warmup: int, expected: list[float]) -> None:
    loss = SegmentationLoss(LossConfig(presence_weight=weight, presence_warmup_epochs=warmup))
    got = [loss.presence_weight_at(epoch) for epoch in range(1, 7)]
    assert got == pytest.approx(expected)


def test_presence_from_mask_logits() -> None:
    logits = torch.arange(100, dtype=torch.float32).view(1, 1, 10, 10)
    assert presence_from_masks(logits, "max", 0.01).item() == 99.0
    # k = round(100 * 0.05) = 5 largest: 95..99.
    assert presence_from_masks(logits, "topk_mean", 0.05).item() == pytest.approx(97.0)
    assert presence_from_masks(logits, "topk_mean", 0.001).item() == 99.0  # k >= 1


def test_total_is_weighted_sum_of_parts() -> None:
    cfg = LossConfig(
        bce_weight=0.3, dice_weight=0.7, focal_weight=0.2, tversky_weight=0.5, pos_weight=2.0,
        presence_weight=0.4, presence_warmup_epochs=2,
    )  # fmt: skip
    loss_fn = SegmentationLoss(cfg)
    target = _mask(2, [FOUR, []])
    logits = torch.randn(2, 1, 4, 4)
    head = torch.tensor([0.5, -1.0])
    total, parts = loss_fn(logits, target, head, epoch=1, detailed=True)
    assert set(parts) == {
        "bce",
        "dice",
        "focal",
        "tversky",
        "presence",
        "seg",
        "total",
        "presence_weight",
    }
    seg = 0.3 * parts["bce"] + 0.7 * parts["dice"] + 0.2 * parts["focal"] + 0.5 * parts["tversky"]
    assert parts["seg"] == pytest.approx(seg, rel=1e-6)
    assert parts["presence_weight"] == pytest.approx(0.2)
    expected_presence = torch.nn.functional.binary_cross_entropy_with_logits(
        head, torch.tensor([1.0, 0.0])
    )
    assert parts["presence"] == pytest.approx(expected_presence.item(), rel=1e-6)
    assert total.item() == pytest.approx(seg + 0.2 * parts["presence"], rel=1e-6)
    assert parts["total"] == pytest.approx(total.item())


def test_presence_source_rules() -> None:
    target = _mask(2, [FOUR, []])
    logits = torch.full((2, 1, 4, 4), -3.0)
    logits[0, 0, 0, 0] = 2.0
    head = torch.tensor([0.0, 0.0])
    # auto without a head uses the max mask logit: [2, -3] against [1, 0].
    auto = SegmentationLoss(LossConfig(presence_weight=1.0))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, -3.0]), torch.tensor([1.0, 0.0])
    )
    assert auto(logits, target, None, detailed=True)[1]["presence"] == pytest.approx(expected.item(), rel=1e-6)
    # auto with a head uses it: logit 0 -> ln 2.
    assert auto(logits, target, head, detailed=True)[1]["presence"] == pytest.approx(LN2, rel=1e-6)
    # max forces the mask even when a head exists.
    forced = SegmentationLoss(LossConfig(presence_weight=1.0, presence_source="max"))
    assert forced(logits, target, head, detailed=True)[1]["presence"] == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ConfigError, match="presence_source=head"):
        SegmentationLoss(LossConfig(presence_weight=1.0, presence_source="head"))(
            logits, target, None
        )


def test_presence_term_skipped_when_weight_zero() -> None:
    total, parts = SegmentationLoss(LossConfig())(
        torch.zeros(1, 1, 4, 4), _mask(1, [FOUR]), None, epoch=3
    )
    assert "presence" not in parts and parts["presence_weight"] == 0.0
    assert total.item() == pytest.approx(0.5 * LN2 + 0.5 * 2 / 3, abs=1e-6)


def test_bf16_logits_are_computed_in_fp32() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    loss_fn = SegmentationLoss(LossConfig(presence_weight=0.5))
    low = logits.to(torch.bfloat16)
    total, _ = loss_fn(low, target, None)
    reference, _ = loss_fn(low.float(), target, None)
    assert total.dtype == torch.float32
    assert total.item() == reference.item()


def test_logits_resized_to_mask_and_detailed_off() -> None:
    total, parts = SegmentationLoss(LossConfig())(
        torch.zeros(1, 1, 2, 2), _mask(1, [FOUR]), detailed=False
    )
    # detailed=False (the training step's default): parts stay device tensors, no readback.
    assert set(parts) == {"bce", "dice", "seg", "total", "presence_weight"}
    assert all(isinstance(parts[k], torch.Tensor) and not parts[k].requires_grad for k in ("bce", "dice", "total"))
    assert parts["total"].item() == pytest.approx(total.item())
    assert total.item() == pytest.approx(0.5 * LN2 + 0.5 * 2 / 3, abs=1e-6)


def test_all_zero_weights_is_config_error() -> None:
    with pytest.raises(ConfigError, match="every weight is 0"):
        SegmentationLoss(LossConfig(bce_weight=0.0, dice_weight=0.0))
