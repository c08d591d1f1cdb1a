"""The pixel baseline: k-means (core/kmeans.py) on raw pixels scaled to [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from core.config import ClusterConfig
from core.context import MethodOutput, RunContext
from core.kmeans import distance_confidence, distance_scale, kmeans, squared_distances


class KMeansReadout(nn.Module):
    """Pixel k-means for new images: nearest centre, confidence at the training set's scale."""

    def __init__(self, centres: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres.detach().float().clone())  # (k, C*S*S)
        self.register_buffer("scale", scale.detach().float().clone())  # ()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The pixels in [0, 1] (N, C*S*S): the run's `embeddings` for its own images."""
        return images.flatten(1).float() / 255.0

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances = squared_distances(self.embed(images), self.centres)  # (N, k)
        return distances.argmin(1), distance_confidence(distances, self.scale)


def run_kmeans(images: torch.Tensor, config: ClusterConfig, ctx: RunContext) -> MethodOutput:
    """k-means on the pixels of `images` (N, C, S, S) uint8; nothing is trained."""
    x = images.flatten(1).float() / 255.0  # (N, C*S*S)
    fit = kmeans(x, config.k, generator=ctx.generator, restarts=3)
    scale = distance_scale(fit.distances)
    return MethodOutput(
        labels=fit.labels,
        confidences=distance_confidence(fit.distances, scale),
        embeddings=x,
        centres=fit.centres,
        predictor=KMeansReadout(fit.centres, scale),
    )
