"""IMC-SwAV's network: encoder, linear projection, unit-norm prototypes, classifier (algorithms.md §2.2–2.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PooledEncoder(nn.Module):
    """A convolutional trunk followed by global average pooling, so the feature size does not depend
    on the crop size (the small VGG flattens, which would give each crop resolution its own size)."""

    def __init__(self, trunk: nn.Module, feature_dim: int):
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.trunk(x), 1).flatten(1)  # (B, feature_dim)


class Prototypes(nn.Module):
    """K' trainable prototype directions; scores are cosines, so the weights are kept unit-norm."""

    def __init__(self, dim: int, count: int):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(count, dim), dim=1))  # (K', d)

    @torch.no_grad()
    def renormalise(self) -> None:
        """In place, before every training forward, as the reference does (§2.3)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return F.normalize(z, dim=1, eps=1e-8) @ self.weight.T  # (B, K') cosines in [-1, 1]


def projection(in_features: int, dim: int) -> nn.Sequential:
    """Linear(in, 512) -> Linear(512, dim): the reference comments out the BN/ReLU between them."""
    return nn.Sequential(nn.Linear(in_features, 512), nn.Linear(512, dim))


def classifier(in_features: int, classes: int, hidden: int = 1024) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, classes),
    )


class IMCNet(nn.Module):
    def __init__(self, encoder: nn.Module, feature_dim: int, classes: int, prototypes: int, project_dim: int):
        super().__init__()
        self.encoder = encoder
        self.project = projection(feature_dim, project_dim)
        self.prototypes = Prototypes(project_dim, prototypes)
        self.classifier = classifier(feature_dim, classes)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        return self.prototypes(self.project(features))  # (B, K')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Read-out logits (B, C) for full images."""
        return self.classifier(self.encoder(x))
