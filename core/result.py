"""What a run reports while it trains (Progress) and what it returns (ClusterResult)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from core.config import ClusterConfig

if TYPE_CHECKING:  # core.predictor imports torch; this module stays importable without it
    from core.kselect import KChoice
    from core.predictor import Predictor


@dataclass(frozen=True)
class Progress:
    """One progress report. `stage` is one of: probe (timing the method for a
    time budget), setup, rotation, clustering, refine, embed, choose_k (k omitted: choosing it on
    the trained representation), done."""

    stage: str
    epoch: int  # epochs finished so far
    epochs: int
    metrics: dict[str, float] = field(default_factory=dict)  # loss, images_per_s, acc, ...
    method: str | None = None  # the method training (what method="auto" settled on), once known


ProgressCallback = Callable[[Progress], None]


@dataclass
class ClusterResult:
    """Per-image labels and confidences plus what produced them.

    confidence: an estimate of the probability that the image's cluster is right (its class is
    the one its cluster stands for), in [0, 1]. It is the method's raw score (MMDC: softmax of
    the cosines to the centres at temperature 0.1; IMC: the classifier's top probability;
    k-means: softmax of negative squared distances scaled by the mean distance to the own
    centre) mapped through a non-decreasing function fitted without labels
    (core/calibration.py) to the posterior of the image's own cluster under a Gaussian mixture
    fitted by EM from the run's clusters on its embeddings (MMDC: its backbone's features). It
    keeps the raw score's ranking.
    """

    labels: np.ndarray  # (N,) int64 in [0, k)
    confidences: np.ndarray  # (N,) float32
    embeddings: np.ndarray  # (N, d) float32
    centres: np.ndarray  # (k, d) float32
    config: ClusterConfig
    device: str
    timings: dict[str, float] = field(default_factory=dict)  # seconds: train, embed, total
    metrics: dict[str, float] | None = None  # acc, nmi, ari and ece (of the confidences) when labels were given
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    resumed_from_epoch: int = 0
    predictor: Predictor | None = None  # applies the trained clustering to new images
    # How k was chosen when the config left it None (then k = len(centres)); None when k was given
    k_choice: KChoice | None = None
    # (N, <= 32) float32 where calibration fits its mixture, if not `embeddings` (MMDC: its
    # backbone's features, IMC-SwAV: its unit projection, by core.calibration.projected); kept
    # for re-clustering
    calibration_space: np.ndarray | None = None
