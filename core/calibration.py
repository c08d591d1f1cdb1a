"""Calibrated confidence: each image's confidence estimates the probability that its cluster is
right, fitted without labels from what the run itself has (docs/algorithms.md §8).

1. The mixtures. On a sample of the run's embeddings (PCA to DIMS, rows normalised), Gaussian
   mixtures with one component per cluster are fitted by EM: RUN_STARTS from the run's cluster
   means, FREE_STARTS from k-means++ centres alone. A fit whose likelihood is far below the best
   (EM stuck, a group split and two merged) is dropped. Per image, the estimate is the mean over
   the kept fits of P(it shares a component with a random member of its own cluster). Where the
   run's clusters are the data's groups, every fit finds them and the estimate is high; where a
   cluster holds two of the groups the free fits find, its images get about their group's share.
   Only the run's own outputs enter; known labels never do.
2. The map. The estimate is regressed on the method's raw score (its softmax confidence)
   isotonically, so confidence = f(raw score) with f non-decreasing: the ranking stays the
   method's, and new images need only the raw score (`CalibratedReadout`).

Why this estimate (bench/RESULTS.md, "Calibration: mixtures free to find their own groups"):
rounds 9-15 used the posterior of the own cluster's component under one mixture started at the
run's clusters. That fit tends to stay at the run's partition, so a weak run's merged clusters
read as right (Fashion-MNIST k-means ECE 0.15 on average over seeds, 0.22 at worst), and where
EM's random start moved it, the outcome was chance (MNIST IMC-SwAV 0.01-0.20 over seeds). It is
a pair-level estimate: an image surely in the main group of a cluster whose share in that
group is a gets a, where that mixture's own posterior says 1, so a cluster's mean is nearer a^2
than a. On clean but overlapping groups it is therefore low by a few points (the overlapping
toy: mean confidence 0.89 at ACC 0.97). What it cannot see: a class split whole into two
compact groups (both halves read as right). MMDC hands over its backbone's features
(`projected`), not its embedding, which is trained towards the run's own targets; IMC-SwAV its
unit projection, not its encoder features, whose sub-styles the free fits split.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
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
# sample rows x components x EM iterations, over all the fits: at k = 10 each of the four fits
# gets sklearn's 100 iterations, at k = 30 33, at k >= 100 10. With 5e7 (round 15's budget for
# its one fit) re-clustering a 70,000-image job at k = 30 took 10.8-11.2 s end to end, over its
# 10 s target (bench/RESULTS.md, "Calibration: mixtures free to find their own groups").
EM_COST = 20_000_000
# EM fits run at once, each on one BLAS thread: re-clustering's fit-and-calibrate step at k = 30
# took 8.3 s with the four fits in turn, 5.9 s two at a time (bench/RESULTS.md, same section)
FIT_THREADS = 2
# The mixtures averaged (bench/RESULTS.md, "Calibration: mixtures free to find their own groups"):
# ones started at the run's clusters stay there; ones started from k-means++ alone find the
# groups a weak run merged. Fits more than LIKELIHOOD_TOLERANCE nats per image below the best are
# another optimum the data reject: on Fashion-MNIST k-means the fits from the run's means lie
# 0.56-2.06 nats below the free ones on each of seeds 0-4, and a free start stuck with one blob
# split and two merged (the separated toy) 2.05; on the overlapping toy all lie within 0.10.
RUN_STARTS = 2
FREE_STARTS = 2
LIKELIHOOD_TOLERANCE = 0.5
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
    """(sample index (S,), estimate (S,) in [0, 1]): per image, the mean over the kept mixtures
    of the probability that it shares a component with a random member of its own cluster
    (`co_assignment`). RUN_STARTS mixtures start at the run's clusters, FREE_STARTS from
    k-means++ alone; a fit more than LIKELIHOOD_TOLERANCE nats per image below the best is
    dropped. `em_seed` (default `seed`) seeds the starts; the sample is `seed`'s either way."""
    index = sample(embeddings.shape[0], k, seed)
    first = seed if em_seed is None else em_seed
    with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
        x, own = reduce(embeddings[index], seed).astype(np.float64), labels[index]
        present, column = np.unique(own, return_inverse=True)  # components: the clusters the sample has
        m = len(present)
        means = np.stack([x[column == c].mean(0) for c in range(m)])
        starts = RUN_STARTS + FREE_STARTS
        iterations = int(np.clip(EM_COST // (len(x) * m * starts), MIN_ITERATIONS, 100))
        full = k <= FULL_MAX_K
        # numpy's products release the GIL, so two fits at a time use two cores; the warning
        # filter is process-wide, so it is set here, not in the threads
        with warnings.catch_warnings(), ThreadPoolExecutor(FIT_THREADS) as pool:
            warnings.filterwarnings("ignore", category=ConvergenceWarning)  # stopped at `iterations`: still fitted
            fits = list(pool.map(lambda start: _mixture(x, m, full, iterations, first + start,
                                                        means if start < RUN_STARTS else None), range(starts)))
        likelihoods = np.array([mixture.score(x) for mixture in fits])  # mean log-likelihood per row
        kept = [mixture for mixture, likelihood in zip(fits, likelihoods, strict=True)
                if likelihood >= likelihoods.max() - LIKELIHOOD_TOLERANCE]
        return index, np.mean([co_assignment(mixture.predict_proba(x), column, m) for mixture in kept], axis=0)


def co_assignment(responsibilities: np.ndarray, column: np.ndarray, m: int) -> np.ndarray:
    """(S,): sum over components j of P(j | image) x the share of its cluster's members in j,
    i.e. P(the image and a random member of its cluster fall in one component). It needs no
    matching of components to clusters, so a mixture free to find its own groups can score the
    run's: where it splits a cluster the cluster's images get about their part's share."""
    profile = np.zeros((m, responsibilities.shape[1]))
    np.add.at(profile, column, responsibilities)
    profile /= np.bincount(column, minlength=m)[:, None]
    return np.clip((responsibilities * profile[column]).sum(1), 0.0, 1.0)


def _mixture(x: np.ndarray, m: int, full: bool, iterations: int, seed: int,
             means: np.ndarray | None) -> GaussianMixture:
    """One EM fit of m components: from the run's cluster means (sklearn's k-means start for the
    weights and covariances) or, with `means` None, from k-means++ centres alone."""
    mixture = GaussianMixture(m, covariance_type="full" if full else "diag", means_init=means,
                              init_params="kmeans" if means is not None else "k-means++",
                              reg_covar=REG_COVAR, max_iter=iterations, random_state=seed)
    return mixture.fit(x)


def projected(features: np.ndarray, seed: int) -> np.ndarray:
    """(N, <= DIMS) float32: `features` (N, F) on the DIMS principal axes of a seeded sample of
    SAMPLE rows, for every row. A method whose embedding is not where calibration should look
    (MMDC's, trained towards its own targets; IMC-SwAV's, whose sub-styles the free fits split)
    hands these over, small enough to keep for re-clustering; `reduce` then only centres and
    normalises them."""
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
