"""IMC-SwAV: being written (issue 3)."""

import torch

from core.config import ClusterConfig
from core.context import MethodOutput, RunContext


def train_imc(images: torch.Tensor, config: ClusterConfig, ctx: RunContext) -> MethodOutput:
    raise ValueError("method='imc' is not available yet; use mmdc or kmeans")
