"""What a run reports while it trains (Progress) and what it returns (ClusterResult)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.config import ClusterConfig

if TYPE_CHECKING:  # core.predictor imports torch; this module stays importable without it
    from core.predictor import Predictor


@dataclass(frozen=True)
class Progress:
    """One progress report. `stage` is one of: probe (timing the method for a
    time budget), setup, rotation, clustering, refine, embed, done."""

    stage: str
    epoch: int  # epochs finished so far
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)  # loss, images_per_s, acc, ...
    method: str | None = None  # the method training (what method="auto" settled on), once known


ProgressCallback = Callable[[Progress], None]


@dataclass
class ClusterResult:
    """Per-image labels and confidences plus what produced them.

    confidence: for MMDC, softmax over the cosine similarities to the centres at temperature
    0.1 (the probability of the assigned centre); for IMC the classifier's top probability;
    for k-means the same softmax over negative squared distances scaled by their median.
    In every method it lies in (1/k, 1] and ranks images by how clearly they belong.
    """

    labels: np.ndarray  # (N,) int64 in [0, k)
    confidences: np.ndarray  # (N,) float32
    embeddings: np.ndarray  # (N, d) float32
    centres: np.ndarray  # (k, d) float32
    config: ClusterConfig
    device: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train, embed, total
    metrics: dict[str, float] | None = None  # acc, nmi, ari when labels were given
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    resumed_from_epoch: int = 0
    predictor: Predictor | None = None  # applies the trained clustering to new images
