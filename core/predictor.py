"""`Predictor`: the trained read-out of one run, applied to new images.

It is an nn.Module (uint8 (N, C, S, S) -> labels, confidences: exactly the mapping that labelled
the run's own images) plus the working size and channels its inputs must be decoded to. A
ClusterResult carries one; core/predict.py saves, loads and applies it to files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.errors import InvalidInput
from core.runtime import autocast


@dataclass
class Predictor:
    readout: nn.Module  # uint8 (N, C, S, S) -> ((N,) int64 labels, (N,) float confidences)
    image_size: int  # S: the run's working size
    channels: int  # C: 1 (grey) or 3 (RGB)
    k: int
    method: str
    precision: str = "fp32"  # the autocast the run labelled its images in, so labels reproduce

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Labels (N,) and confidences (N,) of uint8 images already at (C, S, S)."""
        expected = (self.channels, self.image_size, self.image_size)
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != expected:
            raise InvalidInput(f"images must be uint8 (N, {', '.join(map(str, expected))}), got "
                               f"{images.dtype} {tuple(images.shape)}; decode them with predict_files")
        self.readout.eval()
        device = next(iter(self.readout.state_dict().values())).device
        labels, confidences = [], []
        for part in images.split(batch_size):
            with autocast(device, self.precision):
                label, confidence = self.readout(part.to(device))
            labels.append(label.cpu())
            confidences.append(confidence.float().cpu())
        return torch.cat(labels).numpy().astype(np.int64), torch.cat(confidences).numpy()
