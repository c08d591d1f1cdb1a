"""IMC-SwAV's settings resolved for one image set, and its learning-rate schedule (algorithms.md §2.6,
§2.7); core/methods/imc.py gives the reasons for the adaptations to arbitrary uploads."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import ClusterConfig, IMCParams
from core.models.backbones import choose_backbone

DEFAULT_EPOCHS = 50
# The reference's batch is 256; a set under 5,120 images trains at 128 (at least 20 steps an
# epoch for N >= 2,560): in 60 s on the 2-core CPU the 1,797 digits reached ACC 0.496 at 256
# (10 epochs), 0.887 at 128 (19) and 0.801 at 64 (17) (bench/RESULTS.md, "Small sets").
BATCH, SMALL_SET_BATCH, MIN_STEPS = 256, 128, 20
MIN_CROP = 16
COLOUR_HIGH_SCALE, COLOUR_LOW_SCALE = (0.2, 1.0), (0.08, 0.4)  # RandomResizedCrop areas (§2.6)
GREY_HIGH_SCALE, GREY_LOW_SCALE = (0.4, 1.0), (0.2, 0.6)  # MNIST-like: whole strokes stay in view
COLOUR_LR, GREY_LR = 5e-4, 2e-3  # Adam's base learning rate when IMCParams.lr is None
SCHEDULE_FRACTION = 0.1  # warm-up / prototype freezing: at most this share of all iterations


@dataclass(frozen=True)
class Plan:
    """IMC settings resolved for one image set."""

    epochs: int
    batch_size: int
    steps_per_epoch: int
    lr: float  # base learning rate, before warm-up and steps
    backbone: str
    prototypes: int
    high_size: int
    low_size: int
    warmup_iters: int
    freeze_iters: int
    milestones: tuple[int, ...]  # epochs after which the learning rate is multiplied by gamma
    high_scale: tuple[float, float]  # crop area fractions
    low_scale: tuple[float, float]
    flip: bool


def default_prototypes(n: int, k: int) -> int:
    return min(1000, max(10 * k, n // 10))


def make_plan(config: ClusterConfig, n: int, channels: int, size: int) -> Plan:
    p: IMCParams = config.imc
    epochs = config.epochs or DEFAULT_EPOCHS
    batch_size = min(config.batch_size or max(SMALL_SET_BATCH, min(BATCH, n // MIN_STEPS)), n)
    steps = n // batch_size  # drop_last; batch_size <= n, so at least one step
    total = epochs * steps
    scaled = max(1, math.ceil(SCHEDULE_FRACTION * total))
    return Plan(
        epochs=epochs, batch_size=batch_size, steps_per_epoch=steps,
        lr=p.lr if p.lr is not None else (COLOUR_LR if channels == 3 else GREY_LR),
        backbone=choose_backbone(config.backbone, channels, size),
        prototypes=p.prototypes or default_prototypes(n, config.k),
        high_size=max(MIN_CROP, round(p.high_crop * size)),
        low_size=max(MIN_CROP, round(p.low_crop * size)),
        warmup_iters=min(p.warmup_iters, scaled), freeze_iters=min(p.freeze_prototypes_iters, scaled),
        milestones=tuple(round(m * epochs) for m in p.lr_milestones),
        high_scale=p.high_scale or (COLOUR_HIGH_SCALE if channels == 3 else GREY_HIGH_SCALE),
        low_scale=p.low_scale or (COLOUR_LOW_SCALE if channels == 3 else GREY_LOW_SCALE),
        flip=p.flip if p.flip is not None else channels == 3,
    )


def learning_rate(p: IMCParams, plan: Plan, iteration: int, epoch: int) -> float:
    """Linear warm-up per iteration times MultiStepLR per epoch (§2.7)."""
    warmup = min(1.0, (iteration + 1) / plan.warmup_iters)
    return plan.lr * warmup * p.lr_gamma ** sum(epoch >= m for m in plan.milestones)
