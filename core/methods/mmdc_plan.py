"""MMDC's settings resolved for one image set: the reference's crops and epoch schedule for its
image type (grey-scale as MNIST, colour as CIFAR-10) wherever MMDCParams leaves `None`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.config import ClusterConfig, MMDCParams
from core.models.backbones import choose_backbone

# The reference's crops as fractions of the side; on a 20k MNIST subset they beat the smaller
# (0.75, 0.625, 0.5) crops used until round 5 at every evaluation (bench/RESULTS.md, "MMDC crops")
GREY_CROPS = (24 / 28, 20 / 28, 16 / 28)  # MNIST: 24, 20 or 16 px of 28
COLOUR_CROPS = (20 / 32,)  # CIFAR-10: 20 px of 32
# px: the reference's input. Smaller working sizes (MNIST keeps 28 px) are upsampled to it inside
# the network: at 28 px the small VGG flattens 256 features instead of 1,024, and MMDC reached
# NMI 0.867 there against 0.944 at 32 px on the same 10,000 MNIST images (bench/RESULTS.md,
# "Working size").
INPUT_SIZE = 32
DEFAULT_EPOCHS = 50
# The reference's batch is 128 (547 steps an MNIST epoch); a small set keeps at least MIN_STEPS
# steps an epoch, down to batch 32, since its schedule counts epochs but learns per step: on the
# 1,797 digits 12 epochs gave ACC 0.467 at batch 128 and 0.660 at 64 for 24 % more CPU time
# (bench/RESULTS.md, "Small sets").
BATCH, MIN_BATCH, MIN_STEPS = 128, 32, 50


@dataclass(frozen=True)
class Schedule:
    """The reference's epoch shape, as fractions of the run (algorithms.md §1.10)."""

    refine_start: float
    lr_decay_at: float
    lr_decay_gamma: float


GREY_SCHEDULE = Schedule(refine_start=20 / 50, lr_decay_at=40 / 50, lr_decay_gamma=0.1)  # MNIST
COLOUR_SCHEDULE = Schedule(refine_start=350 / 400, lr_decay_at=300 / 400, lr_decay_gamma=0.2)  # CIFAR-10
# A grey-scale plan of fewer than SHORT_STEPS optimiser steps (a short time budget on a small
# set) refines late and keeps its learning rate: k-means targets fixed at 40 % of a few hundred
# steps lock in an unformed embedding. On the 1,797 digits (52 steps an epoch), mean ACC of seeds
# 0 and 1, reference -> this: 6 epochs 0.52 -> 0.64, 8 epochs 0.59 -> 0.83, 10 epochs 0.75 -> 0.88,
# 12 epochs 0.88 -> 0.87, against k-means' 0.69 (bench/results/mmdc-short-schedule-digits-cpu.json)
SHORT_STEPS = 800
SHORT_GREY_SCHEDULE = Schedule(refine_start=0.75, lr_decay_at=1.0, lr_decay_gamma=0.1)


@dataclass(frozen=True)
class Plan:
    """MMDC settings resolved for one image set (the `None` defaults of MMDCParams filled in)."""

    epochs: int
    batch_size: int
    backbone: str
    rotation: bool
    crops: tuple[float, ...]
    flip: bool
    jitter: bool
    rotate_degrees: float
    refine_epoch: int
    decay_epoch: int
    decay_gamma: float


def make_plan(config: ClusterConfig, n: int, channels: int, size: int) -> Plan:
    p: MMDCParams = config.mmdc
    colour = channels == 3
    backbone = choose_backbone(config.backbone, channels, size)
    epochs = config.epochs or DEFAULT_EPOCHS
    batch_size = min(config.batch_size or max(MIN_BATCH, min(BATCH, n // MIN_STEPS)), n)
    default_crops = COLOUR_CROPS if colour else GREY_CROPS
    short = not colour and epochs * math.ceil(n / batch_size) < SHORT_STEPS
    schedule = COLOUR_SCHEDULE if colour else SHORT_GREY_SCHEDULE if short else GREY_SCHEDULE
    return Plan(
        epochs=epochs,
        batch_size=batch_size,
        backbone=backbone,
        rotation=p.rotation if p.rotation is not None else backbone == "resnet18",
        crops=tuple(p.crop_fractions) if p.crop_fractions else default_crops,
        flip=p.flip if p.flip is not None else colour,
        jitter=p.color_jitter if p.color_jitter is not None else colour,
        rotate_degrees=p.rotate_degrees if p.rotate_degrees is not None else (0.0 if colour else 25.0),
        refine_epoch=_refine_epoch(p.refine_start, schedule, epochs, short),
        decay_epoch=round(_given(p.lr_decay_at, schedule.lr_decay_at) * epochs),
        decay_gamma=_given(p.lr_decay_gamma, schedule.lr_decay_gamma),
    )


def _given(value: float | None, default: float) -> float:
    return default if value is None else value


def _refine_epoch(given: float | None, schedule: Schedule, epochs: int, short: bool) -> int:
    epoch = round(_given(given, schedule.refine_start) * epochs)
    # a short plan's late start still refines in its last epoch: without it, 1 epoch read out by
    # the GMM means scored ACC 0.21 on the digits where refining from the start scored 0.67
    return min(epoch, epochs - 1) if short and given is None else epoch
