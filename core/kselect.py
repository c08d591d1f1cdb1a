"""Choosing k after training: score k = 2..k_max on a sample of the trained representation.

Each k is one k-means of a random sample of the (L2-normalised) embeddings, scored by the
criterion; the best-scoring k wins. Only the sample is clustered per k, so the choice costs the
same for 10,000 and 70,000 images; the final labels come from one k-means on all of them at the
chosen k (core/recluster.py). docs/algorithms.md §7 gives the criterion and its measurement.
IMC-SwAV's runs choose with classifier heads instead (core/kheads.py), scored the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import calinski_harabasz_score, davies_bouldin_score, silhouette_score

from core.errors import InvalidInput
from core.kmeans import TOL, kmeans, normalise

SAMPLE = 3000  # points the criterion is computed on; silhouette is O(sample²)
RESTARTS = 2
CRITERION = "silhouette"
# The k a run trains with when k is chosen afterwards. IMC-SwAV's encoder does not see k (its
# classifier reads detached features; the prototypes are min(1000, max(10 k, N/10))), so 10 makes
# the encoder exactly a k=10 run's. MMDC's embedding has k dimensions: 10 as well (§7). k-means
# trains nothing: its representation is the pixels, so the cheapest fit, k=2.
TRAINING_K = {"auto": 10, "imc": 10, "mmdc": 10, "kmeans": 2}  # auto settles on imc or mmdc


@dataclass(frozen=True)
class KChoice:
    k: int
    criterion: str
    k_max: int
    scores: list[tuple[int, float]]  # (k, the criterion's value), for every k tried; higher is better
    note: str | None = None  # why k is not the highest-scoring k, where it is not

    def to_dict(self) -> dict[str, object]:
        return {"k": self.k, "criterion": self.criterion, "k_max": self.k_max,
                "scores": [{"k": k, "score": _json_float(score)} for k, score in self.scores], "note": self.note}


Criterion = Callable[[np.ndarray, np.ndarray, np.ndarray], float]  # (x, labels, distances) -> higher = better

def spherical_bic(x: np.ndarray, labels: np.ndarray) -> float:
    """BIC of the k-means partition as a mixture of spherical Gaussians with one shared variance
    (X-means: Pelleg & Moore, ICML 2000)."""
    n, d = x.shape
    k = int(labels.max()) + 1
    counts = np.bincount(labels, minlength=k).astype(np.float64)
    centres = np.zeros((k, d))
    np.add.at(centres, labels, x)
    centres /= np.maximum(counts, 1)[:, None]
    variance = max(float(((x - centres[labels]) ** 2).sum()) / (d * max(n - k, 1)), 1e-12)  # per dimension
    present = counts[counts > 0]
    log_likelihood = float((present * np.log(present / n)).sum()) - n * d / 2 * math.log(2 * math.pi * variance) \
        - d * (n - k) / 2
    parameters = (k - 1) + k * d + 1
    return log_likelihood - parameters / 2 * math.log(n)


CRITERIA: dict[str, Criterion] = {
    "silhouette": lambda x, labels, distances: float(silhouette_score(distances, labels, metric="precomputed")),
    "calinski_harabasz": lambda x, labels, distances: float(calinski_harabasz_score(x, labels)),
    "davies_bouldin": lambda x, labels, distances: -float(davies_bouldin_score(x, labels)),
    "bic": lambda x, labels, distances: spherical_bic(x, labels),
}


def training_k(method: str, n_images: int) -> int:
    """The k to train `method` with on `n_images` images before k is chosen."""
    return min(TRAINING_K[method], n_images)


def sample_of(embeddings: np.ndarray, size: int, seed: int) -> torch.Tensor:
    """Normalised rows of a seeded random sample of at most `size` embeddings."""
    x = torch.as_tensor(np.asarray(embeddings))
    if x.ndim != 2 or x.shape[0] < 2:
        raise InvalidInput(f"embeddings must be (N, d) with N >= 2, got {tuple(x.shape)}")
    generator = torch.Generator().manual_seed(seed)
    if x.shape[0] > size:
        x = x[torch.randperm(x.shape[0], generator=generator)[:size]]
    return normalise(x)


@dataclass(frozen=True)
class Partitions:
    """k-means partitions of one normalised sample for every k tried."""

    points: np.ndarray  # (S, d) float64, unit rows
    distances: np.ndarray  # (S, S) Euclidean
    labels: dict[int, np.ndarray]  # k -> (S,) labels


def partitions(embeddings: np.ndarray, k_max: int, *, seed: int = 0, sample: int = SAMPLE) -> Partitions:
    """One k-means of the same seeded sample for each k = 2..k_max (capped below the sample size)."""
    x = sample_of(embeddings, sample, seed)
    k_max = min(k_max, x.shape[0] - 1)  # silhouette needs fewer clusters than points
    if k_max < 2:
        raise InvalidInput(f"choosing k needs at least 3 images and k_max >= 2 (got {x.shape[0]}, {k_max})")
    distances = torch.cdist(x, x).clamp_min_(0).numpy().astype(np.float64)
    np.fill_diagonal(distances, 0)
    generator = torch.Generator().manual_seed(seed)
    labels = {k: kmeans(x, k, generator=generator, restarts=RESTARTS, tol=TOL).labels.numpy()
              for k in range(2, k_max + 1)}
    return Partitions(x.numpy().astype(np.float64), distances, labels)


def score_ks(embeddings: np.ndarray | Partitions, k_max: int, *, criterion: str = CRITERION, seed: int = 0,
             sample: int = SAMPLE) -> list[tuple[int, float]]:
    """(k, score) for k = 2..k_max, each from one k-means of the same sample; higher is better."""
    parts = embeddings if isinstance(embeddings, Partitions) else partitions(embeddings, k_max, seed=seed,
                                                                             sample=sample)
    score = CRITERIA[criterion]
    return [(k, score(parts.points, labels, parts.distances) if len(np.unique(labels)) > 1 else -math.inf)
            for k, labels in parts.labels.items() if k <= k_max]


def choose_k(embeddings: np.ndarray, k_max: int, *, seed: int = 0) -> KChoice:
    """The k in 2..k_max (capped by the points) that scores best on the embeddings (N, d)."""
    scores = score_ks(embeddings, k_max, seed=seed)
    best = max(scores, key=lambda pair: pair[1])[0]
    return KChoice(k=best, criterion=CRITERION, k_max=scores[-1][0], scores=scores)


def _json_float(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
