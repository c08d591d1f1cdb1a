"""Heads on top of a backbone's features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SphereHead(nn.Module):
    """Linear map to R^d followed by L2 normalisation (MMDC's clustering head)."""

    def __init__(self, in_features: int, dim: int):
        super().__init__()
        self.linear = nn.Linear(in_features, dim)
        nn.init.normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # eps guards the zero vector the reference would turn into NaN (algorithms.md §4, MMDC 6)
        return F.normalize(self.linear(features), dim=1, eps=1e-8)  # (B, d), unit norm


def linear_head(in_features: int, out_features: int) -> nn.Linear:
    head = nn.Linear(in_features, out_features)
    nn.init.normal_(head.weight, std=0.01)
    nn.init.zeros_(head.bias)
    return head
