"""Choosing k for IMC-SwAV: one classifier head per candidate k, fitted after training.

IMC-SwAV's classifier maximises β·H(Y) − H(Y|U) between its outputs and the prototype
distributions U of the detached encoder features (docs/algorithms.md §2.5), and the encoder never
sees k. So once a run has trained, a linear head for every candidate k is fitted by that same
objective on the frozen features and prototype distributions of the full images: seconds, not a
new run. Each k gets RESTARTS heads (the objective has local optima) and keeps the one that
reaches the best objective on the images it was fitted on, so no label is involved. Its
partition is scored by the silhouette of the centred, normalised features, and the
best-scoring k's head labels the images.

Why not k-means on the same features (core/kselect.py, the path of MMDC and k-means): the IMC
features hold sub-styles that k-means splits. On the cached 10,000-image MNIST run the silhouette
of k-means partitions chose k = 14 at NMI 0.76; the heads chose 10 at NMI 0.89, the trained
classifier's own quality (bench/RESULTS.md, "Choosing k with classifier heads").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import silhouette_score
from torch import nn

from core.errors import InvalidInput
from core.kselect import SAMPLE, KChoice
from core.losses import joint_information_loss
from core.methods.imc import centres_of

CRITERION = "silhouette of classifier heads"
RESTARTS = 3
FIT_SAMPLE = 5000  # images the heads are fitted on (at least PER_CLUSTER per cluster); every image is labelled
PER_CLUSTER = 20
EPOCHS = 20
MIN_STEPS = 200  # a small set (one batch an epoch) still gets this many optimiser steps
BATCH = 512
LR = 3e-3
DENSE_UP_TO = 20  # every k up to here is a candidate; above it a grid (each head costs k columns)
GRID_STEP = 1.25  # above DENSE_UP_TO, each candidate about this much larger than the one before


def candidates(k_max: int) -> list[int]:
    """The k tried in 2..k_max: every k up to DENSE_UP_TO, then about GRID_STEP apart, and k_max."""
    ks = list(range(2, min(k_max, DENSE_UP_TO) + 1))
    while ks[-1] < k_max:
        ks.append(min(k_max, max(ks[-1] + 1, round(ks[-1] * GRID_STEP / 5) * 5)))
    return ks


class Heads(nn.Module):
    """Standardised features -> one linear layer holding every head's logits side by side."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, sizes: list[int], generator: torch.Generator):
        super().__init__()
        self.sizes = sizes
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.linear = nn.Linear(mean.shape[0], sum(sizes))
        bound = 1 / math.sqrt(mean.shape[0])  # nn.Linear's own init, from a seeded generator
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound, generator=generator)
            self.linear.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Per head, its probabilities (N, k)."""
        logits = self.linear((features.float() - self.mean) / self.std)
        return [F.softmax(part, dim=1) for part in logits.split(self.sizes, dim=1)]


def fit_heads(features: torch.Tensor, codes: torch.Tensor, ks: list[int], *, beta: float,
              seed: int) -> tuple[Heads, list[int]]:
    """Heads for every k in ks, RESTARTS each, fitted on a seeded sample by minibatch Adam on
    the loss (core/losses.py); returns them and, per k, the index of the restart with the lowest loss."""
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    size = max(FIT_SAMPLE, PER_CLUSTER * max(ks))
    fit_on = torch.randperm(n, generator=generator)[:size] if n > size else torch.arange(n)
    x, u = features[fit_on].float(), codes[fit_on].float()
    sizes = [k for k in ks for _ in range(RESTARTS)]
    heads = Heads(x.mean(0), x.std(0).clamp_min(1e-6), sizes, generator)
    optimizer = torch.optim.Adam(heads.parameters(), lr=LR)
    batch = min(BATCH, x.shape[0])
    steps = max(MIN_STEPS, EPOCHS * (x.shape[0] // batch))
    with torch.enable_grad():
        while steps > 0:
            for index in torch.randperm(x.shape[0], generator=generator).split(batch)[:steps]:
                if len(index) < batch:  # drop_last: a small tail batch is a poor estimate of the joint
                    continue
                steps -= 1
                joints = (torch.cat(heads(x[index]), 1).T @ u[index]).split(sizes)  # one matmul for all heads
                loss = torch.stack([joint_information_loss(joint, beta) for joint in joints]).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        outputs = heads(x)
        losses = [float(joint_information_loss(p.double().T @ u.double(), beta)) for p in outputs]
    best = [min(range(RESTARTS), key=lambda r: losses[i * RESTARTS + r]) for i in range(len(ks))]
    return heads, best


@dataclass(frozen=True)
class HeadChoice:
    """The chosen head's clustering of every image, and how k was chosen."""

    choice: KChoice
    labels: np.ndarray  # (N,) int64 in [0, k)
    confidences: np.ndarray  # (N,) float32: the head's top probability (raw, before calibration)
    centres: np.ndarray  # (k, d) float32: mean feature per cluster (zeros for none: every cluster is used)
    head: nn.Module  # features (N, d) -> (labels, top probability), for new images


class ChosenHead(nn.Module):
    """One head taken out of Heads: features -> (argmax, top probability)."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, heads: Heads, column: int, k: int):
        super().__init__()
        self.register_buffer("mean", heads.mean.detach().clone())
        self.register_buffer("std", heads.std.detach().clone())
        self.linear = nn.Linear(heads.mean.shape[0], k)
        with torch.no_grad():
            self.linear.weight.copy_(heads.linear.weight[column:column + k])
            self.linear.bias.copy_(heads.linear.bias[column:column + k])

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.linear((features.float() - self.mean) / self.std)
        confidences, labels = F.softmax(logits, dim=1).max(1)
        return labels, confidences


def choose_k_by_heads(features: np.ndarray | torch.Tensor, codes: np.ndarray | torch.Tensor, k_max: int, *,
                      beta: float, seed: int = 0) -> HeadChoice:
    """Fit heads for the candidates in 2..k_max (capped below the image count), score each k's
    best head by silhouette on a seeded sample, and label every image with the winner."""
    x, u = torch.as_tensor(features).float(), torch.as_tensor(codes).float()
    if x.ndim != 2 or u.ndim != 2 or x.shape[0] != u.shape[0] or x.shape[0] < 3:
        raise InvalidInput(f"choosing k needs (N, d) features and (N, K') codes with N >= 3, got "
                           f"{tuple(x.shape)} and {tuple(u.shape)}")
    ks = candidates(min(k_max, x.shape[0] - 1))  # silhouette needs fewer clusters than points
    heads, best = fit_heads(x, u, ks, beta=beta, seed=seed)
    with torch.no_grad():
        outputs = heads(x)
    picked = [outputs[i * RESTARTS + r] for i, r in enumerate(best)]
    sample, unit = silhouette_sample(x, seed)
    scores = []
    for k, probabilities in zip(ks, picked, strict=True):
        labels = probabilities.argmax(1)
        used = len(torch.unique(labels))  # a head that leaves a cluster empty is not a k-partition
        sampled = labels[sample].numpy()
        valid = used == k and 1 < len(np.unique(sampled)) < len(sampled)
        scores.append((k, float(silhouette_score(unit, sampled)) if valid else -math.inf))
    index = max(range(len(ks)), key=lambda i: scores[i][1])
    k = ks[index]
    column = sum(ks[:index]) * RESTARTS + best[index] * k
    confidences, labels = picked[index].max(1)
    centres = centres_of(x, labels, k)
    return HeadChoice(KChoice(k=k, criterion=CRITERION, k_max=ks[-1], scores=scores),
                      labels.numpy().astype(np.int64), confidences.numpy().astype(np.float32),
                      centres.numpy().astype(np.float32), ChosenHead(heads, column, k))


def silhouette_sample(features: torch.Tensor, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """(indices, their centred unit rows (S, d) float64): the points the silhouette is taken on."""
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    index = torch.randperm(n, generator=generator)[:SAMPLE] if n > SAMPLE else torch.arange(n)
    centred = features[index].double() - features.double().mean(0)  # ReLU features: all positive
    return index, F.normalize(centred, dim=1).numpy()


class HeadReadout(nn.Module):
    """A run's read-out with a chosen head in place of its classifier: uint8 images -> the base's
    embedding (`embed`) -> the head's (argmax, top probability)."""

    def __init__(self, base: nn.Module, head: nn.Module):
        super().__init__()
        self.base = base  # an IMCReadout
        # on the base's device: Predictor moves images to the device of the first state entry
        self.head = head.to(next(iter(base.state_dict().values())).device)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.base.embed(images)  # type: ignore[no-any-return,operator]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.autocast(images.device.type, enabled=False):  # the head was fitted in fp32
            return self.head(self.embed(images).float())  # type: ignore[no-any-return]
