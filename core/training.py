"""The two ends of every method's epoch loop: resume from the checkpoint before the first epoch,
and close each epoch with one call (history record, checkpoint, progress report)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch

from core.context import RunContext
from core.metrics import evaluate


class TrainingState(Protocol):
    """A method's training state (a dataclass): the counters kept here and its own tensors."""

    epoch: int  # epochs finished
    history: list[dict[str, float]]  # one record per finished epoch
    train_seconds: float

    def state_dict(self) -> dict[str, Any]:
        """The method's own part of a checkpoint (model, optimiser, ...)."""
        ...

    def load_state_dict(self, saved: dict[str, Any]) -> None: ...


def resume(ctx: RunContext, state: TrainingState) -> int:
    """Load ctx.checkpoint into `state` when one was saved; returns the epoch training resumes from."""
    saved = ctx.checkpoint.load() if ctx.checkpoint is not None else None
    if saved is not None:
        state.load_state_dict(saved)
        ctx.generator.set_state(saved["generator"])
        state.epoch, state.history = int(saved["epoch"]), list(saved["history"])
        state.train_seconds = float(saved["train_seconds"])
    return state.epoch


def end_epoch(
    ctx: RunContext,
    state: TrainingState,
    *,
    epochs: int,
    stage: str,
    metrics: dict[str, float],
    started: float,
    labels: Callable[[], torch.Tensor],
) -> None:
    """Count the epoch begun at `started`, record it in the history (scored against ctx.labels
    when due: `labels()` gives the current (N,) labels), save the checkpoint and report progress."""
    state.epoch += 1
    state.train_seconds += time.perf_counter() - started
    record = {"epoch": state.epoch, **metrics, "seconds": state.train_seconds}
    if ctx.should_evaluate(state.epoch, epochs):
        assert ctx.labels is not None
        record |= evaluate(ctx.labels, labels().cpu().numpy())
    state.history.append(record)
    if ctx.checkpoint is not None:
        ctx.checkpoint.save({**state.state_dict(), "generator": ctx.generator.get_state(), "epoch": state.epoch,
                             "history": state.history, "train_seconds": state.train_seconds})
    ctx.report(stage, state.epoch, epochs,
               **{key: value for key, value in record.items() if key != "epoch" and np.isfinite(value)})
