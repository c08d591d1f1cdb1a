"""Choosing k for IMC-SwAV: one classifier head per candidate k, fitted after training.

IMC-SwAV's classifier maximises β·H(Y) − H(Y|U) between its outputs and the prototype
distributions U of the detached encoder features (docs/algorithms.md §2.5), and the encoder never
sees k. So once a run has trained, a linear head for every candidate k is fitted by that same
objective on the frozen features and prototype distributions of the full images: seconds, not a
new run. Each k gets RESTARTS heads (the objective has local optima) and keeps the one that
reaches the best objective on the images it was fitted on, so no label is involved. Its
partition is scored by the silhouette of the centred, normalised features, and the
best-scoring k's head labels the images. At the training k the candidate is the run's own
classifier (`ClassifierHead`), and a head beats it only by a significant margin (`chosen_k`).

Why not k-means on the same features (core/kselect.py, the path of MMDC and k-means): the IMC
features hold sub-styles that k-means splits. On the cached 10,000-image MNIST run the silhouette
of k-means partitions chose k = 14 at NMI 0.76; the heads chose 10 at NMI 0.89, the trained
classifier's own quality (bench/RESULTS.md, "Choosing k with classifier heads").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import norm
from sklearn.metrics import silhouette_samples
from torch import nn

from core.errors import InvalidInput
from core.kselect import SAMPLE, KChoice
from core.losses import joint_information_loss
from core.methods.imc import centres_of
from core.runtime import batches

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
# A fitted head replaces the run's classifier (the training k's candidate) only where its
# silhouette is higher by a significant margin: a one-sided test at this level of the mean paired
# per-point difference, Bonferroni-corrected over the other candidates (z = 2.84 for k_max = 50),
# whose standard error also holds the spread between fits of one k (`fit_noise`: 0.008-0.015 on
# the 10,000-image runs, where the points' own error was 0.002-0.003). The classifier trained on
# every crop for the whole run and the heads were fitted afterwards, so on a plateau the heads'
# partitions are the weaker ones (bench/RESULTS.md, "Choosing k, the classifier unless beaten",
# "Choosing k: the spread between fits").
ALPHA = 0.05

# The prototype distributions of the rows at an index: (S,) -> (S, K'). A head is fitted on
# FIT_SAMPLE rows, so re-clustering computes codes for those only (`head_at`).
Codes = Callable[[torch.Tensor], torch.Tensor]


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


def fit_heads(features: torch.Tensor, codes: Codes, ks: list[int], *, beta: float,
              seed: int) -> tuple[Heads, list[int]]:
    """Heads for every k in ks, RESTARTS each, fitted on a seeded sample by minibatch Adam on
    the loss (core/losses.py); returns them and, per k, the index of the restart with the lowest loss."""
    generator = torch.Generator().manual_seed(seed)
    n = features.shape[0]
    size = max(FIT_SAMPLE, PER_CLUSTER * max(ks))
    fit_on = torch.randperm(n, generator=generator)[:size] if n > size else torch.arange(n)
    x, u = features[fit_on].float(), codes(fit_on).float()
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
class HeadClustering:
    """A head's clustering of every image, and the head for new images."""

    labels: np.ndarray  # (N,) int64 in [0, k)
    confidences: np.ndarray  # (N,) float32: the head's top probability (raw, before calibration)
    centres: np.ndarray  # (k, d) float32: mean feature per cluster (zeros for an empty one)
    head: nn.Module  # features (N, d) -> (labels, top probability), for new images


@dataclass(frozen=True)
class HeadChoice(HeadClustering):
    """The chosen head's clustering, and how k was chosen."""

    choice: KChoice


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


class ClassifierHead(nn.Module):
    """The run's own trained classifier as the head of its training k: features -> (argmax, top
    probability). It trained on every crop for the whole run, and it is what the run returns when
    that k is given, so it is the candidate there (docs/algorithms.md §7)."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier
        self.k: int = [m for m in classifier.modules() if isinstance(m, nn.Linear)][-1].out_features

    def probabilities(self, features: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.classifier(features.float()).float(), dim=1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        confidences, labels = self.probabilities(features).max(1)
        return labels, confidences


def trained_head(readout: nn.Module) -> ClassifierHead | None:
    """The IMC-SwAV read-out's classifier as a head (None for a read-out without one)."""
    net = getattr(readout, "net", None)
    return None if net is None else ClassifierHead(net.classifier)


def choose_k_by_heads(features: np.ndarray | torch.Tensor, codes: np.ndarray | torch.Tensor, k_max: int, *,
                      beta: float, seed: int = 0, trained: ClassifierHead | None = None) -> HeadChoice:
    """Fit heads for the candidates in 2..k_max (capped below the image count), score each k's
    best head by silhouette on a seeded sample, and label every image with the winner. `trained`
    (the run's classifier) is the candidate of its own k instead of a fitted head."""
    x, u = check_inputs(features, codes)
    ks = candidates(min(k_max, x.shape[0] - 1))  # silhouette needs fewer clusters than points
    options: dict[int, tuple[torch.Tensor, nn.Module]] = {}  # k -> (probabilities (N, k), head)
    restarts: dict[int, tuple[list[torch.Tensor], int]] = {}  # fitted k -> (every restart's probabilities, best)
    with torch.no_grad():
        if trained is not None and trained.k in ks:
            options[trained.k] = (trained.probabilities(x), trained)
        fitted = [k for k in ks if k not in options]
        if fitted:
            heads, best = fit_heads(x, u.__getitem__, fitted, beta=beta, seed=seed)
            outputs = heads(x)
            column = 0
            for i, k in enumerate(fitted):
                restarts[k] = (outputs[i * RESTARTS:(i + 1) * RESTARTS], best[i])
                options[k] = (outputs[i * RESTARTS + best[i]], ChosenHead(heads, column + best[i] * k, k))
                column += RESTARTS * k
    sample, unit = silhouette_sample(x, seed)
    distances = torch.cdist(torch.from_numpy(unit), torch.from_numpy(unit)).clamp_min_(0).numpy()
    np.fill_diagonal(distances, 0)

    def silhouettes(probabilities: torch.Tensor) -> np.ndarray | None:
        """Per-point silhouettes of a head's partition; None where it is not a k-partition."""
        labels = probabilities.argmax(1)
        sampled = labels[sample].numpy()
        if len(torch.unique(labels)) < probabilities.shape[1] or not 1 < len(np.unique(sampled)) < len(sampled):
            return None  # a head that leaves a cluster empty is not a k-partition
        return silhouette_samples(distances, sampled, metric="precomputed")

    per_restart = {k: [silhouettes(p) for p in outputs] for k, (outputs, _) in restarts.items()}
    points: dict[int, np.ndarray] = {}  # k -> per-point silhouettes, for the heads that use all k clusters
    for k in ks:
        values = per_restart[k][restarts[k][1]] if k in restarts else silhouettes(options[k][0])
        if values is not None:
            points[k] = values
    scores = [(k, float(points[k].mean()) if k in points else -math.inf) for k in ks]
    k = chosen_k(points, None if trained is None else trained.k, fit_noise(per_restart)) if points else ks[0]
    clustering = labelled(x, *options[k])
    note = kept_note(scores, k, None if trained is None else trained.k)
    choice = KChoice(k=k, criterion=CRITERION, k_max=ks[-1], scores=scores, note=note)
    return HeadChoice(**vars(clustering), choice=choice)


def kept_note(scores: list[tuple[int, float]], k: int, trained_k: int | None) -> str | None:
    """Why `chosen_k` took `k` over a higher-scoring k, for the job's record; None where k is the highest."""
    best, top = max(scores, key=lambda pair: pair[1])
    if best == k or trained_k is None:
        return None
    value = dict(scores)
    kept = (f"k = {best} scored highest ({top:.3f}), but not above the run's own classifier "
            f"(k = {trained_k}, {value[trained_k]:.3f}) by more than the spread between fits allows")
    return kept if k == trained_k else f"{kept}; the head at k = {k} ({value[k]:.3f}) did"


def fit_noise(per_restart: dict[int, list[np.ndarray | None]]) -> float:
    """The standard deviation of one fit's mean silhouette around its k's, pooled over the
    candidates' restarts (the same k fitted from other starts); 0 without two restarts of one k."""
    variances = []
    for restarts in per_restart.values():
        means = [float(values.mean()) for values in restarts if values is not None]
        if len(means) > 1:
            variances.append(float(np.var(means, ddof=1)))
    return math.sqrt(float(np.mean(variances))) if variances else 0.0


def chosen_k(points: dict[int, np.ndarray], trained_k: int | None, fit_sd: float = 0.0) -> int:
    """The k of the best mean silhouette among the training k and the candidates that beat it
    significantly (ALPHA); the plain best where the training k has no partition. The difference's
    standard error is that of its points' mean together with `fit_sd` (`fit_noise`) for each of
    the two partitions: which partition one fit reaches is itself a draw."""
    means = {k: float(values.mean()) for k, values in points.items()}
    best = max(means, key=means.__getitem__)
    if trained_k not in points or best == trained_k:
        return best
    threshold = float(norm.isf(ALPHA / max(1, len(points) - 1)))

    def significant(k: int) -> bool:
        difference = points[k] - points[trained_k]
        error = math.sqrt(float(difference.var(ddof=1)) / len(difference) + 2 * fit_sd**2)
        return float(difference.mean()) > threshold * error

    return max([trained_k, *(k for k in points if k != trained_k and significant(k))], key=means.__getitem__)


def head_at(features: np.ndarray | torch.Tensor, codes: np.ndarray | torch.Tensor | Codes, k: int, *,
            beta: float, seed: int = 0, trained: ClassifierHead | None = None) -> HeadClustering:
    """The best of RESTARTS heads fitted at one k, as `choose_k_by_heads` fits each candidate
    (or `trained`, the run's classifier, at its own k, where no code is read): re-clustering an
    IMC-SwAV run at a k given after training (core/recluster.py). `codes`: every row's, or a
    function giving the rows' at an index."""
    x = check_features(features)
    if not 2 <= k <= x.shape[0]:
        raise InvalidInput(f"k={k} needs 2 <= k <= {x.shape[0]}, the images given")
    with torch.no_grad():
        if trained is not None and trained.k == k:
            return labelled(x, trained.probabilities(x), trained)
    if not callable(codes):
        codes = check_inputs(x, codes)[1].__getitem__
    heads, best = fit_heads(x, codes, [k], beta=beta, seed=seed)
    with torch.no_grad():
        probabilities = heads(x)[best[0]]
    return labelled(x, probabilities, ChosenHead(heads, best[0] * k, k))


def labelled(features: torch.Tensor, probabilities: torch.Tensor, head: nn.Module) -> HeadClustering:
    confidences, labels = probabilities.max(1)
    centres = centres_of(features, labels, probabilities.shape[1])
    return HeadClustering(labels.numpy().astype(np.int64), confidences.numpy().astype(np.float32),
                          centres.numpy().astype(np.float32), head)


def check_features(features: np.ndarray | torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(features).float()
    if x.ndim != 2 or x.shape[0] < 3:
        raise InvalidInput(f"classifier heads need (N, d) features with N >= 3, got {tuple(x.shape)}")
    return x


def check_inputs(features: np.ndarray | torch.Tensor,
                 codes: np.ndarray | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, u = check_features(features), torch.as_tensor(codes).float()
    if u.ndim != 2 or x.shape[0] != u.shape[0]:
        raise InvalidInput(f"classifier heads need (N, d) features and (N, K') codes, got "
                           f"{tuple(x.shape)} and {tuple(u.shape)}")
    return x, u


def prototype_codes(readout: nn.Module, features: np.ndarray) -> torch.Tensor:
    """IMC-SwAV's prototype distributions (N, K') of a run's encoder features, in batches."""
    device = next(iter(readout.state_dict().values())).device
    with torch.no_grad():
        return torch.cat([readout.codes(torch.from_numpy(features[part]).to(device)).cpu()  # type: ignore[operator]
                          for part in batches(features.shape[0], 4096)])


def codes_at(readout: nn.Module, features: np.ndarray) -> Codes:
    """The prototype distributions of the features' rows at an index, computed when asked: a head
    reads only its fit sample's (5,000 of a 70,000-image job's rows)."""
    return lambda index: prototype_codes(readout, features[index.numpy()])


def imc_readout_of(readout: nn.Module | None) -> nn.Module | None:
    """The IMC-SwAV read-out (the one with prototype codes) under a run's calibration and head
    wrappers (each keeps its base as `.base`); None for other methods' read-outs, and for one
    pickled before read-outs kept their prototype temperature (it cannot give codes)."""
    while readout is not None and not hasattr(readout, "codes"):
        readout = getattr(readout, "base", None)
    return readout if readout is not None and hasattr(readout, "temperature") else None


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
