"""The epoch loop both trainers share: resume, train, score, checkpoint, report."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from core.checkpoint import load_checkpoint, save_checkpoint
from core.context import RunContext
from core.metrics import evaluate


class Trainer(Protocol):
    epoch: int
    history: list[dict[str, float]]
    train_seconds: float

    def state(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


def run_epochs(
    trainer: Trainer,
    ctx: RunContext,
    *,
    epochs: int,
    config: dict[str, Any],
    n_images: int,
    train_epoch: Callable[[], tuple[str, dict[str, float]]],
    predict: Callable[[], torch.Tensor],
) -> int:
    """Train from the checkpoint's epoch (or 0) to `epochs`; returns the epoch resumed from.

    train_epoch runs one epoch and returns (stage, metrics); predict gives current labels (N,).
    """
    saved = load_checkpoint(ctx.checkpoint, config=config, n_images=n_images)
    if saved is not None:
        trainer.restore(saved)
    resumed_from = trainer.epoch
    ctx.report("setup", trainer.epoch, epochs)
    while trainer.epoch < epochs and ctx.room_for_epoch():
        started = time.perf_counter()
        stage, metrics = train_epoch()
        trainer.epoch += 1
        trainer.train_seconds += time.perf_counter() - started
        record = {"epoch": trainer.epoch, **metrics, "seconds": trainer.train_seconds}
        if ctx.should_evaluate(trainer.epoch, epochs):
            assert ctx.labels is not None
            record |= evaluate(ctx.labels, predict().cpu().numpy())
        trainer.history.append(record)
        if ctx.checkpoint is not None:
            save_checkpoint(ctx.checkpoint, trainer.state())
        ctx.report(stage, trainer.epoch, epochs,
                   **{key: value for key, value in record.items() if key != "epoch" and np.isfinite(value)})
    return resumed_from
