"""k-means (Lloyd, k-means++ seeding) in torch, on any device: MMDC's refinement (core/refine.py),
the pixel baseline (core/methods/kmeans.py) and re-clustering (core/recluster.py) run it."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

TOL = 1e-4  # sklearn's default: the centres' total squared move, relative to the total variance


def normalise(features: torch.Tensor) -> torch.Tensor:
    """(N, d) float -> unit rows: cosine geometry, which the trained representations live in."""
    return F.normalize(features.float(), dim=1, eps=1e-8)


@dataclass
class KMeansFit:
    labels: torch.Tensor  # (N,) int64
    centres: torch.Tensor  # (k, d)
    inertia: float
    distances: torch.Tensor  # (N, k) squared distances to the centres


def squared_distances(x: torch.Tensor, centres: torch.Tensor, x_sq: torch.Tensor | None = None) -> torch.Tensor:
    """(N, k) squared Euclidean distances via one addmm, clamped at 0 against round-off."""
    x_sq = (x * x).sum(1, keepdim=True) if x_sq is None else x_sq  # (N, 1)
    c_sq = (centres * centres).sum(1)  # (k,)
    return torch.addmm(x_sq + c_sq, x, centres.T, alpha=-2.0).clamp_min_(0)


def kmeans_plus_plus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn prop. to D^2."""
    n = x.shape[0]
    first = torch.randint(n, (1,), generator=generator, device=generator.device).to(x.device)
    centres = [x[first[0]]]
    closest = squared_distances(x, centres[0][None]).squeeze(1)  # (N,)
    for _ in range(1, k):
        weights = closest if closest.sum() > 0 else torch.ones_like(closest)
        pick = torch.multinomial(weights.to(generator.device), 1, generator=generator).to(x.device)
        centres.append(x[pick[0]])
        closest = torch.minimum(closest, squared_distances(x, centres[-1][None]).squeeze(1))
    return torch.stack(centres)


def lloyd(x: torch.Tensor, centres: torch.Tensor, *, iterations: int, tol: float) -> KMeansFit:
    """Lloyd iterations; an emptied cluster takes the point farthest from its centre."""
    k = centres.shape[0]
    x_sq = (x * x).sum(1, keepdim=True)
    threshold = tol * (x.var(0).sum() + 1e-12)
    for _ in range(iterations):
        distances = squared_distances(x, centres, x_sq)
        labels = distances.argmin(1)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        new = sums / counts.clamp_min(1)[:, None]
        for empty in torch.nonzero(counts == 0).flatten().tolist():
            farthest = distances.min(1).values.argmax()
            new[empty] = x[farthest]
            distances[farthest] = 0
        shift = ((new - centres) ** 2).sum()
        centres = new
        if shift <= threshold:
            break
    distances = squared_distances(x, centres, x_sq)
    labels = distances.argmin(1)
    inertia = float(distances.gather(1, labels[:, None]).sum())
    return KMeansFit(labels, centres, inertia, distances)


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    generator: torch.Generator,
    restarts: int = 3,
    iterations: int = 100,
    tol: float = 1e-6,
) -> KMeansFit:
    """Best of `restarts` k-means++ + Lloyd runs by inertia. x: (N, d) float."""
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k={k} must be between 1 and the {x.shape[0]} points")
    x = x.float()
    best: KMeansFit | None = None
    for _ in range(max(1, restarts)):
        fit = lloyd(x, kmeans_plus_plus(x, k, generator), iterations=iterations, tol=tol)
        if best is None or fit.inertia < best.inertia:
            best = fit
    assert best is not None
    return best


def distance_scale(distances: torch.Tensor) -> torch.Tensor:
    """The mean squared distance to the own centre: the temperature of the confidence softmax."""
    return distances.min(1).values.mean().clamp_min(1e-12)


def distance_confidence(distances: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over negative squared distances scaled by the mean distance to the own centre."""
    scale = distance_scale(distances) if scale is None else scale
    return torch.softmax(-distances / scale, dim=1).max(1).values
