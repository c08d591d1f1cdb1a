"""MMDC's network: a backbone, the unit-norm clustering head and the rotation head (algorithms.md §1.2, §1.6)."""

from __future__ import annotations

import torch
from torch import nn

from core.models.heads import SphereHead, linear_head


class MMDCNet(nn.Module):
    def __init__(self, backbone: nn.Module, k: int, rotation: bool):
        super().__init__()
        self.backbone = backbone
        self.cluster_head = SphereHead(backbone.feature_dim, k)  # d = k (§1.2)
        self.rotation_head = linear_head(backbone.feature_dim, 4) if rotation else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cluster_head(self.backbone(x))  # (B, k), unit norm

    def rotation_logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.rotation_head is not None
        return self.rotation_head(self.backbone(x))  # (B, 4)


class FeaturesAndEmbedding(nn.Module):
    """`net`'s backbone features (B, F) and its embedding (B, k) side by side, (B, F + k): one
    pass gives both, and the embedding is the one `net` itself computes."""

    def __init__(self, net: MMDCNet):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.backbone(x)
        return torch.cat([features.float(), self.net.cluster_head(features).float()], 1)
