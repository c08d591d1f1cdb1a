"""Calibrated confidence: each image's confidence estimates the probability that its cluster is
right, fitted without labels from what the run itself has (docs/algorithms.md §8).

1. Witnesses. On a sample of the run's embeddings (PCA to DIMS, rows normalised), other
   clusterings of the same representation are fitted: WITNESSES k-means runs and, up to
   SPECTRAL_MAX_K clusters, spectral clustering of the k-nearest-neighbour graph (another
   inductive bias, so its disagreements are less correlated with k-means'). Each is matched
   one-to-one to the run's clusters (Hungarian); an image's agreement is the mean, over the two
   kinds, of the share that put it in its own cluster: a label-free estimate of P(its cluster
   is right). Only the run's own outputs enter; known labels never do.
2. The map. Agreement is regressed on the method's raw score (its softmax confidence)
   isotonically, so confidence = f(raw score) with f non-decreasing: the ranking stays the
   method's, and new images need only the raw score (`CalibratedReadout`).

What it cannot see: an error every clustering of the representation makes the same way (two
classes merged into one compact group, one split in two). Where such errors dominate, confidence
stays too high (bench/RESULTS.md, "Calibration").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.cluster import SpectralClustering
from sklearn.decomposition import PCA
from sklearn.isotonic import IsotonicRegression
from torch import nn

from core.assign import hungarian
from core.kmeans import kmeans
from core.predictor import Predictor

SAMPLE = 5000  # images the witnesses cluster (at least PER_CLUSTER per cluster): seconds, not minutes
PER_CLUSTER = 20
DIMS = 32  # PCA components the witnesses see
WITNESSES = 3  # k-means witnesses, each the best of KMEANS_RESTARTS (one seeding can merge two blobs)
KMEANS_RESTARTS = 3
SPECTRAL_MAX_K = 64  # above this, the k eigenvectors cost more than the run's read-out
NEIGHBOURS = 15  # of the spectral witness's graph
TIE_BREAK = 0.01  # weight of the raw score, so images on one plateau of f keep their order


@dataclass(frozen=True)
class Calibration:
    """f: raw score -> P(right), piecewise linear through (knots, values), constant outside."""

    knots: np.ndarray  # (m,) increasing raw scores
    values: np.ndarray  # (m,) non-decreasing, in [0, 1]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        mapped = np.interp(raw, self.knots, self.values)
        return ((1 - TIE_BREAK) * mapped + TIE_BREAK * np.clip(raw, 0, 1)).astype(np.float32)


def witnesses(embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sample index (S,), agreement (S,) in [0, 1]): per image, the mean over the two kinds of
    witness (k-means, spectral) of the share that, matched one-to-one to the run's clusters, put
    it in its own cluster."""
    n = embeddings.shape[0]
    rng = np.random.default_rng(seed)
    size = min(n, max(SAMPLE, PER_CLUSTER * k))
    index = np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)
    x, own = torch.from_numpy(reduce(embeddings[index], seed)), labels[index]
    generator = torch.Generator().manual_seed(seed)
    kinds = [[agrees(kmeans(x, k, generator=generator, restarts=KMEANS_RESTARTS).labels.numpy(), own, k)
              for _ in range(WITNESSES)]]
    if k <= SPECTRAL_MAX_K and size > NEIGHBOURS:
        spectral = SpectralClustering(k, affinity="nearest_neighbors", n_neighbors=NEIGHBOURS,
                                      assign_labels="cluster_qr", random_state=seed)
        with warnings.catch_warnings():  # well-separated clusters leave the graph disconnected: fine here
            warnings.filterwarnings("ignore", message="Graph is not fully connected")
            kinds.append([agrees(spectral.fit_predict(x.numpy()), own, k)])
    return index, np.mean([np.mean(votes, axis=0) for votes in kinds], axis=0)


def reduce(x: np.ndarray, seed: int) -> np.ndarray:
    """Centred, PCA to DIMS when wider, rows to unit length: (S, min(d, DIMS)) float32."""
    x = x.astype(np.float64) - x.mean(0)
    if x.shape[1] > DIMS and x.shape[0] > DIMS:
        x = PCA(DIMS, svd_solver="randomized", random_state=seed).fit_transform(x)
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def agrees(other: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """(S,) 1.0 where `other`'s cluster, matched one-to-one to the run's, is the image's own."""
    size = max(k, int(other.max()) + 1, int(own.max()) + 1)
    table = np.zeros((size, size), dtype=np.int64)
    np.add.at(table, (other, own), 1)
    mapping = hungarian(table.max() - table)  # other's cluster -> run's cluster
    return (mapping[other] == own).astype(np.float64)


def fit(raw: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int = 0) -> Calibration:
    """The map f from the run's raw scores (N,) to the witnesses' agreement, isotonic."""
    index, agreement = witnesses(embeddings, labels, k, seed)
    x = np.asarray(raw, dtype=np.float64)[index]
    regression = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, agreement)
    return Calibration(regression.X_thresholds_.astype(np.float64), regression.y_thresholds_.astype(np.float64))


def calibrate(raw: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, k: int,
              seed: int = 0) -> tuple[np.ndarray, Calibration]:
    """Calibrated confidences (N,) float32 of one clustering, and the map that made them."""
    calibration = fit(raw, embeddings, labels, k, seed)
    return calibration(raw), calibration


class CalibratedReadout(nn.Module):
    """A run's read-out with its calibration: uint8 images -> (labels, f(raw confidence)), so a
    new image gets the confidence the run's own image of the same raw score got."""

    knots: torch.Tensor
    scores: torch.Tensor

    def __init__(self, base: nn.Module, calibration: Calibration):
        super().__init__()
        self.base = base
        # on the base's device: Predictor moves images to the device of the first state entry
        device = next(iter(base.state_dict().values())).device
        self.register_buffer("knots", torch.from_numpy(calibration.knots).to(device))  # (m,) float64
        self.register_buffer("scores", torch.from_numpy(calibration.values).to(device))  # (m,) float64

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The base read-out's embedding (re-clustering reads it)."""
        return self.base.embed(images)  # type: ignore[no-any-return,operator]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels, raw = self.base(images)
        calibration = Calibration(self.knots.cpu().numpy(), self.scores.cpu().numpy())
        return labels, torch.from_numpy(calibration(raw.float().cpu().numpy())).to(raw.device)


def calibrated_predictor(predictor: Predictor, calibration: Calibration) -> Predictor:
    """`predictor` whose confidences go through `calibration`, as the run's own did."""
    return replace(predictor, readout=CalibratedReadout(predictor.readout, calibration))
