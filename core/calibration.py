"""Calibrated confidence: each image's confidence estimates the probability that its cluster is
right, fitted without labels from what the run itself has (docs/algorithms.md §8).

1. The mixture. On a sample of the run's embeddings (PCA to DIMS, rows normalised), a Gaussian
   mixture with one component per cluster is fitted by EM, started from the run's clusters (each
   component's mean at its cluster's). Where the run's clusters are the shape of the data, EM
   stays there and the posterior of an image's own component is P(its cluster is right) under
   that model; where they are not, EM moves and the posterior falls for the images it moves.
   Only the run's own outputs enter; known labels never do.
2. The map. The posterior is regressed on the method's raw score (its softmax confidence)
   isotonically, so confidence = f(raw score) with f non-decreasing: the ranking stays the
   method's, and new images need only the raw score (`CalibratedReadout`).

What it cannot see: an error the mixture makes the same way (two classes merged into one compact
group, one split in two). Where such errors dominate, confidence stays too high (bench/RESULTS.md,
"Calibration"). On such runs one fit is also partly chance: EM from the run's clusters reaches
one of several optima depending on the sample and on sklearn's seeded k-means start, which gives
EM its first weights and covariances: component j takes k-means cluster j's beside the run's
cluster j's mean, indices unmatched (Fashion-MNIST k-means: ECE 0.07 to 0.22 over seeds 0-4,
0.05 to 0.22 over EM starts on one sample; MNIST IMC-SwAV 0.006 to 0.149 over seeds). MMDC
hands over its backbone's features (`projected`), not its embedding, which is trained towards the
run's own targets. Averaging mixtures fitted on resampled halves or from several EM starts,
held-out (cross-fitted) posteriors, the fit of best likelihood among several, covariance
shrinkage chosen by held-out likelihood and randomly started mixtures were measured as
replacements and not kept: none met the target on all runs, each made a run that is now within
it worse, and the averages cost 2-4 times the time. Many small mixtures pooled meet it on
Fashion-MNIST but lower every confidence the smaller they are, so MNIST IMC-SwAV falls to
0.23-0.37 (bench/RESULTS.md, "Calibration").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.isotonic import IsotonicRegression
from sklearn.mixture import GaussianMixture
from threadpoolctl import threadpool_limits
from torch import nn

from core.predictor import Predictor

SAMPLE = 5000  # images the mixture is fitted on (at least PER_CLUSTER per cluster): seconds, not minutes
PER_CLUSTER = 20
DIMS = 32  # PCA components the mixture sees
# Full covariances up to this k (they beat diagonal ones on 4 of the 6 MNIST/Fashion runs, and
# BIC prefers them: bench/RESULTS.md, "Calibration"); above it k x DIMS^2 parameters from ~20
# images a cluster are ill-posed and slow, so diagonal ones.
FULL_MAX_K = 32
# sample rows x components x EM iterations: up to k = 100 EM gets sklearn's 100 iterations; at
# k = 1000 (20,000 rows) 10: 15 s on 2 cores, where 100 took 75 s (random 64-d rows)
EM_COST = 50_000_000
MIN_ITERATIONS = 10
REG_COVAR = 1e-4  # added to the covariances' diagonal: a cluster of a few images stays invertible
TIE_BREAK = 0.01  # weight of the raw score, so images on one plateau of f keep their order
# BLAS threads for the PCA and EM: their products are small (5,000 x 32 by 32 x 32, and 32 x 32
# triangular solves), and on 2 cores two BLAS threads beside torch's OpenMP ones made EM 3-4 times
# slower than one. The iterations were the same; the posteriors differed only by floating-point
# order, ECE by <= 0.003 on the six cached runs (bench/RESULTS.md, "Re-clustering in seconds").
BLAS_THREADS = 1


@dataclass(frozen=True)
class Calibration:
    """f: raw score -> P(right), piecewise linear through (knots, values), constant outside."""

    knots: np.ndarray  # (m,) increasing raw scores
    values: np.ndarray  # (m,) non-decreasing, in [0, 1]

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        mapped = np.interp(raw, self.knots, self.values)
        return ((1 - TIE_BREAK) * mapped + TIE_BREAK * np.clip(raw, 0, 1)).astype(np.float32)


def sample(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted indices of the images calibration is fitted on: SAMPLE (or PER_CLUSTER * k) of n."""
    size = min(n, max(SAMPLE, PER_CLUSTER * k))
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else np.arange(n)


def posterior(embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int,
              em_seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sample index (S,), P(own cluster | embedding) (S,) in [0, 1]): the posterior of a Gaussian
    mixture fitted by EM from the run's clusters, one component per cluster in the sample.
    `em_seed` (default `seed`) seeds sklearn's k-means that gives EM its first weights and
    covariances; the sample is `seed`'s either way."""
    index = sample(embeddings.shape[0], k, seed)
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        x, own = reduce(embeddings[index], seed).astype(np.float64), labels[index]
        present, column = np.unique(own, return_inverse=True)  # components: the clusters the sample has
        means = np.stack([x[column == c].mean(0) for c in range(len(present))])
        iterations = int(np.clip(EM_COST // (len(x) * len(present)), MIN_ITERATIONS, 100))
        mixture = GaussianMixture(len(present), covariance_type="full" if k <= FULL_MAX_K else "diag",
                                  means_init=means, reg_covar=REG_COVAR, max_iter=iterations,
                                  random_state=seed if em_seed is None else em_seed)
        with warnings.catch_warnings():  # an EM stopped at `iterations` is still a fitted mixture
            warnings.filterwarnings("ignore", category=ConvergenceWarning)
            mixture.fit(x)
        return index, mixture.predict_proba(x)[np.arange(len(own)), column]


def projected(features: np.ndarray, seed: int) -> np.ndarray:
    """(N, <= DIMS) float32: `features` (N, F) on the DIMS principal axes of a seeded sample of
    SAMPLE rows, for every row. A method whose embedding is not where calibration should look
    (MMDC's, trained towards its own targets) hands these over, small enough to keep for
    re-clustering; `reduce` then only centres and normalises them."""
    n = features.shape[0]
    if features.shape[1] <= DIMS:
        return features.astype(np.float32)
    index = sample(n, 1, seed)
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        rows = features[index].astype(np.float64)
        dims = min(DIMS, rows.shape[0])
        pca = PCA(dims, svd_solver="full" if dims == rows.shape[0] else "randomized", random_state=seed).fit(rows)
        return np.concatenate([pca.transform(features[part:part + SAMPLE].astype(np.float64)).astype(np.float32)
                               for part in range(0, n, SAMPLE)])


def reduce(x: np.ndarray, seed: int) -> np.ndarray:
    """Centred, PCA to DIMS (fewer for fewer rows) when wider, rows to unit length: (S, <= DIMS) float32."""
    x = x.astype(np.float64) - x.mean(0)
    # a small set keeps no more dimensions than rows: 30 images of 3,072 pixels left unreduced
    # made full covariances of 3,072^2 and took 190 s to calibrate
    dims = min(DIMS, x.shape[0])
    if x.shape[1] > dims:
        x = PCA(dims, svd_solver="full" if dims == x.shape[0] else "randomized", random_state=seed).fit_transform(x)
    return (x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)).astype(np.float32)


def fit(raw: np.ndarray, embeddings: np.ndarray, labels: np.ndarray, k: int, seed: int = 0) -> Calibration:
    """The map f from the run's raw scores (N,) to the mixture's posterior of the own cluster, isotonic."""
    index, estimate = posterior(embeddings, labels, k, seed)
    x = np.asarray(raw, dtype=np.float64)[index]
    regression = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, estimate)
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
