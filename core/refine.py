"""MMDC's refinement stage: k-means pseudo-targets whose ids stay aligned with the previous labels."""

from __future__ import annotations

import numpy as np
import torch

from core.assign import hungarian
from core.methods.kmeans import kmeans


def align_labels(new: np.ndarray, previous: np.ndarray, k: int) -> np.ndarray:
    """Rename clusters of `new` so they overlap `previous` as much as possible (one-to-one)."""
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (new, previous), 1)
    mapping = hungarian(len(new) - overlap)  # new id -> previous id
    return mapping[new]


def kmeans_targets(
    embeddings: torch.Tensor, previous: torch.Tensor, k: int, *, generator: torch.Generator, restarts: int
) -> torch.Tensor:
    """One-hot (N, k) targets from k-means on the embeddings, ids aligned with `previous`."""
    fit = kmeans(embeddings, k, generator=generator, restarts=restarts)
    aligned = align_labels(fit.labels.cpu().numpy(), previous.cpu().numpy(), k)
    labels = torch.from_numpy(aligned).to(embeddings.device)
    return torch.nn.functional.one_hot(labels, k).float()
