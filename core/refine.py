"""MMDC's refinement stage (algorithms.md §1.8): k-means (core/kmeans.py) pseudo-targets whose ids
stay aligned with the previous labels."""

from __future__ import annotations

import numpy as np
import torch

from core.assign import hungarian
from core.kmeans import kmeans, lloyd
from core.runtime import upload


def relabelling(new: np.ndarray, previous: np.ndarray, k: int) -> np.ndarray:
    """The permutation new id -> previous id that maximises the overlap of the two labellings."""
    overlap = np.zeros((k, k), dtype=np.int64)
    np.add.at(overlap, (new, previous), 1)
    return hungarian(len(new) - overlap)


def align_labels(new: np.ndarray, previous: np.ndarray, k: int) -> np.ndarray:
    """Rename clusters of `new` so they overlap `previous` as much as possible (one-to-one)."""
    return relabelling(new, previous, k)[new]


def kmeans_centres(
    embeddings: torch.Tensor,
    previous: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator,
    restarts: int,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """k-means centres (k, d) of the embeddings, ordered so centre c overlaps previous label c.

    With `init`, Lloyd from those centres competes with the k-means++ restarts; lowest inertia wins.
    """
    fit = kmeans(embeddings, k, generator=generator, restarts=restarts)
    if init is not None:
        seeded = lloyd(embeddings.float(), init.float().clone(), iterations=100, tol=1e-6)
        fit = seeded if seeded.inertia < fit.inertia else fit
    mapping = relabelling(fit.labels.cpu().numpy(), previous.cpu().numpy(), k)
    order = np.argsort(mapping)  # order[c] = the k-means centre that becomes centre c
    return fit.centres[upload(order, fit.centres.device)]


def kmeans_targets(
    embeddings: torch.Tensor, previous: torch.Tensor, k: int, *, generator: torch.Generator, restarts: int
) -> torch.Tensor:
    """One-hot (N, k) targets from k-means on the embeddings, ids aligned with `previous`."""
    fit = kmeans(embeddings, k, generator=generator, restarts=restarts)
    aligned = align_labels(fit.labels.cpu().numpy(), previous.cpu().numpy(), k)
    labels = upload(aligned, embeddings.device)
    return torch.nn.functional.one_hot(labels, k).float()
