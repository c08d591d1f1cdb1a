"""What every method receives besides images and config, and what it hands back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from core.budget import Deadline, EpochPlan
from core.checkpoint import Checkpoint
from core.result import Progress, ProgressCallback


@dataclass
class RunContext:
    device: torch.device
    generator: torch.Generator  # on `device`; every random draw of a run comes from it
    on_progress: ProgressCallback | None = None
    checkpoint: Checkpoint | None = None  # saved at every epoch end; resumed from when it exists
    labels: np.ndarray | None = None  # known classes, only for the per-epoch quality curve
    eval_every: int = 0  # epochs between quality evaluations (0 = only at the end)
    started: float = field(default_factory=time.perf_counter)
    plan: EpochPlan | None = None  # the epochs fitted to a time budget, shown with every report
    deadline: Deadline | None = None  # a budgeted run stops at the epoch end that would overrun it
    method: str | None = None  # the method training, named in every report

    def report(self, stage: str, epoch: int, epochs: int, **metrics: float) -> None:
        if self.on_progress is not None:
            if self.plan is not None and self.deadline is not None:
                expected_end = self.deadline.at - self.plan.budget_s + self.plan.expected_s
                metrics = {**self.plan.metrics(), "eta_s": max(0.0, expected_end - time.perf_counter()), **metrics}
            self.on_progress(Progress(stage, epoch, epochs, dict(metrics), self.method))

    def room_for_epoch(self) -> bool:
        """False once the next epoch would end past the deadline (always True without one)."""
        return self.deadline is None or self.deadline.room_for_epoch()

    def should_evaluate(self, epoch: int, epochs: int) -> bool:
        return self.labels is not None and self.eval_every > 0 and (
            epoch % self.eval_every == 0 or epoch == epochs
        )


@dataclass
class MethodOutput:
    labels: torch.Tensor  # (N,) int64
    confidences: torch.Tensor  # (N,)
    embeddings: torch.Tensor  # (N, d)
    centres: torch.Tensor  # (k, d)
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0
    train_seconds: float = 0.0
    # The trained read-out for new images: uint8 (N, C, S, S) -> (labels, confidences), the same
    # mapping that produced `labels` (see core/predict.py). None for methods that cannot predict.
    predictor: torch.nn.Module | None = None
    precision: str = "fp32"  # what the predictor must run in to reproduce `labels`: bf16 or fp32
    # (N, F) where calibration fits its mixture, if not `embeddings`: MMDC's backbone features, as
    # its k-d embedding is trained towards its own targets and looks separated whatever the
    # clusters' purity; IMC-SwAV's unit projection (docs/algorithms.md §8). None: the embeddings.
    calibration_features: torch.Tensor | None = None
