"""The pixel baseline: k-means (core/kmeans.py) on raw pixels scaled to [0, 1]."""

from __future__ import annotations

import torch
from torch import nn

from core.config import ClusterConfig
from core.context import MethodOutput, RunContext
from core.kmeans import kmeans, squared_distances


def distance_scale(distances: torch.Tensor) -> torch.Tensor:
    """The mean squared distance to the own centre: the temperature of the confidence softmax."""
    return distances.min(1).values.mean().clamp_min(1e-12)


def distance_confidence(distances: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over negative squared distances scaled by the mean distance to the own centre."""
    scale = distance_scale(distances) if scale is None else scale
    return torch.softmax(-distances / scale, dim=1).max(1).values


class KMeansReadout(nn.Module):
    """Pixel k-means for new images: nearest centre, confidence at the training set's scale."""

    def __init__(self, centres: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("centres", centres.detach().float().clone())  # (k, C*S*S)
        self.register_buffer("scale", scale.detach().float().clone())  # ()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        distances = squared_distances(images.flatten(1).float() / 255.0, self.centres)  # (N, k)
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
