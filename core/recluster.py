"""Re-clustering a finished run at another k from its trained representation, without training.

A run's `embeddings` (N, d) are the representation its read-out sees (IMC-SwAV: the encoder
features; MMDC: the unit embedding; k-means: the pixels). Given an IMC-SwAV read-out, `recluster`
fits a classifier head at the new k to the run's prototype distributions, as a job without k
chooses its k (core/kheads.py; at the run's training k, its own classifier); otherwise, or
where that head leaves a cluster empty, it runs k-means on the embeddings, L2-normalised first
(spherical k-means; docs/algorithms.md §7 gives the measurements). `reclustered_predictor`
wraps the run's read-out so new images are embedded exactly as the run's own and go to the new
head or the nearest new centre.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.calibration import Calibration, calibrate, calibrated_predictor
from core.config import BOUNDS, IMCParams
from core.errors import InvalidInput
from core.kheads import HeadReadout, codes_at, head_at, imc_readout_of, trained_head
from core.kmeans import TOL, KMeansFit, distance_confidence, distance_scale, kmeans, lloyd, normalise, squared_distances
from core.metrics import evaluate
from core.predictor import Predictor

# k-means++ restarts fit a sample of FIT_SAMPLE rows (FIT_PER_CLUSTER per cluster at large k), then
# POLISH_ITERATIONS Lloyd steps on all rows move the best fit's centres and label every row. On the
# 70,000 MNIST encoder features (k = 5..50) this is within 0.9 % of full k-means' inertia (the same
# restarts, Lloyd to convergence on all rows) with NMI/ACC against the digits within 0.03 of it, in
# 0.2-0.7 s against its 1.2-7.5 s (bench/RESULTS.md, "Re-clustering").
FIT_SAMPLE = 10_000
FIT_PER_CLUSTER = 40
RESTARTS = 3
POLISH_ITERATIONS = 2


@dataclass(frozen=True)
class Reclustering:
    labels: np.ndarray  # (N,) int64 in [0, k)
    confidences: np.ndarray  # (N,) float32
    centres: np.ndarray  # (k, d) float32, in the normalised space the distances are taken in
    metrics: dict[str, float] | None  # acc/nmi/ari when labels given
    # The confidence softmax's temperature: the mean squared distance to the own centre over the
    # re-clustered set, so a predictor built from this gives new images confidences on one scale.
    scale: float = 1.0
    calibration: Calibration | None = None  # raw confidence -> P(right), core/calibration.py
    head: nn.Module | None = None  # IMC-SwAV: the head (or classifier) that labelled; None: k-means' centres


def check_k(k: int, n: int) -> None:
    low, high = BOUNDS["k"]
    if not low <= k <= high:
        raise InvalidInput(f"k={k} is out of range; use {low} <= k <= {high}")
    if k > n:
        raise InvalidInput(f"k={k} exceeds the {n} images given; lower k")


def fit_kmeans(x: torch.Tensor, k: int, generator: torch.Generator, *, sample_size: int = FIT_SAMPLE) -> KMeansFit:
    """k-means of x (N, d): restarts on a sample of max(sample_size, FIT_PER_CLUSTER * k) rows,
    then POLISH_ITERATIONS Lloyd steps on all rows; every row gets a label and its distances."""
    n = x.shape[0]
    size = max(sample_size, FIT_PER_CLUSTER * k)
    if n <= size:
        return kmeans(x, k, generator=generator, restarts=RESTARTS, tol=TOL)
    sample = torch.randperm(n, generator=generator, device=generator.device)[:size].to(x.device)
    seeded = kmeans(x[sample], k, generator=generator, restarts=RESTARTS, tol=TOL)
    return lloyd(x, seeded.centres, iterations=POLISH_ITERATIONS, tol=TOL)


def recluster(embeddings: np.ndarray, k: int, *, seed: int = 0, labels: np.ndarray | None = None,
              readout: nn.Module | None = None, beta: float = IMCParams.beta,
              calibration_space: np.ndarray | None = None) -> Reclustering:
    """k clusters of a run's embeddings (N, d): by a classifier head where `readout` (the run's
    predictor's) is IMC-SwAV's and the head uses all k clusters, else by spherical k-means.
    Confidences are calibrated on the embeddings, or on `calibration_space` (N, d') where the run
    kept one (ClusterResult.calibration_space)."""
    x = torch.as_tensor(np.asarray(embeddings))
    if x.ndim != 2 or x.shape[0] == 0:
        raise InvalidInput(f"embeddings must be (N, d) with N >= 1, got {tuple(x.shape)}")
    check_k(k, x.shape[0])
    if labels is not None and len(labels) != x.shape[0]:
        raise InvalidInput(f"labels has {len(labels)} entries for {x.shape[0]} embeddings; give one per image")
    if calibration_space is not None and calibration_space.shape[0] != x.shape[0]:
        raise InvalidInput(f"calibration_space has {calibration_space.shape[0]} rows for {x.shape[0]} embeddings")
    imc = imc_readout_of(readout)
    if imc is not None and k < x.shape[0]:
        features = np.asarray(embeddings)
        chosen = head_at(features, codes_at(imc, features), k, beta=beta, seed=seed, trained=trained_head(imc))
        if len(np.unique(chosen.labels)) == k:  # else k-means, which keeps every cluster
            space = features if calibration_space is None else calibration_space
            confidences, calibration = calibrate(chosen.confidences, space, chosen.labels, k, seed=seed)
            metrics = None if labels is None else evaluate(np.asarray(labels), chosen.labels, confidences)
            return Reclustering(labels=chosen.labels, confidences=confidences, centres=chosen.centres,
                                metrics=metrics, calibration=calibration, head=chosen.head)
    generator = torch.Generator().manual_seed(seed)
    unit = normalise(x)
    fit = fit_kmeans(unit, k, generator)
    predicted = fit.labels.numpy().astype(np.int64)
    scale = distance_scale(fit.distances)
    raw = distance_confidence(fit.distances, scale).numpy()
    space = unit.numpy() if calibration_space is None else calibration_space
    confidences, calibration = calibrate(raw, space, predicted, k, seed=seed)
    return Reclustering(
        labels=predicted,
        confidences=confidences,
        centres=fit.centres.numpy().astype(np.float32),
        metrics=None if labels is None else evaluate(np.asarray(labels), predicted, confidences),
        scale=float(scale),
        calibration=calibration,
    )


class ReclusteredReadout(nn.Module):
    """A run's read-out with new centres: uint8 images -> its embedding (`embed`), normalised,
    -> (nearest new centre, k-means confidence at the re-clustering's own distance scale)."""

    centres: torch.Tensor
    scale: torch.Tensor

    def __init__(self, base: nn.Module, centres: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.base = base  # an IMCReadout, MMDCReadout or KMeansReadout (anything with embed())
        self.register_buffer("centres", centres.detach().float().clone())  # (k, d)
        self.register_buffer("scale", scale.detach().float().clone())  # ()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.embed(images)  # type: ignore[no-any-return,operator]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.embed(images).float()  # (N, d), in the run's precision, as its embeddings
        with torch.autocast(features.device.type, enabled=False):  # recluster's distances are fp32
            distances = squared_distances(normalise(features), self.centres)  # (N, k)
            return distances.argmin(1), distance_confidence(distances, self.scale)


def reclustered_predictor(base: Predictor, clustering: Reclustering) -> Predictor:
    """The predictor of `base`'s run re-clustered as `clustering` (same embedding, new head or centres)."""
    if not hasattr(base.readout, "embed"):
        raise InvalidInput(f"a {base.method} read-out cannot embed images, so it cannot be re-clustered")
    k = len(clustering.centres)
    imc = imc_readout_of(base.readout)
    if clustering.head is not None and imc is not None:
        readout: nn.Module = HeadReadout(imc, clustering.head)
    else:
        device = next(iter(base.readout.state_dict().values())).device
        readout = ReclusteredReadout(base.readout, torch.from_numpy(clustering.centres).to(device),
                                     torch.tensor(clustering.scale, dtype=torch.float32).to(device))
    predictor = Predictor(readout, image_size=base.image_size, channels=base.channels, k=k,
                          method=base.method, precision=base.precision)
    return predictor if clustering.calibration is None else calibrated_predictor(predictor, clustering.calibration)
