"""Clustering quality against known classes: Hungarian-matched ACC, NMI (arithmetic), ARI, and
the expected calibration error (ECE) of the confidences."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from core.assign import hungarian
from core.errors import InvalidInput


def contingency(predicted: np.ndarray, truth: np.ndarray, size: int = 0) -> np.ndarray:
    """Square table M[c, g] = #{i: predicted_i = c, truth_i = g}, padded to D x D."""
    size = max(size, int(max(predicted.max(initial=0), truth.max(initial=0))) + 1)
    table = np.zeros((size, size), dtype=np.int64)
    np.add.at(table, (predicted, truth), 1)
    return table


def cluster_to_class(predicted: np.ndarray, truth: np.ndarray, clusters: int = 0) -> np.ndarray:
    """The one-to-one map cluster -> class that maximises the matches."""
    table = contingency(predicted, truth, clusters)
    return hungarian(table.max() - table)


def accuracy(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of images whose cluster maps to their class under the best one-to-one map."""
    if np.asarray(truth).size == 0:
        raise InvalidInput("accuracy needs at least one image")
    return float(correct(truth, predicted).mean())


def top5_accuracy(truth: np.ndarray, scores: np.ndarray) -> float:
    """A hit when any of the 5 highest-scoring clusters maps to the class (SCAN's top-5)."""
    truth = _as_labels(truth)
    mapping = cluster_to_class(scores.argmax(1), truth, scores.shape[1])
    top = np.argsort(-scores, axis=1)[:, :5]
    return float((mapping[top] == truth[:, None]).any(1).mean())


def nmi(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(normalized_mutual_info_score(truth, predicted, average_method="arithmetic"))


def ari(truth: np.ndarray, predicted: np.ndarray) -> float:
    return float(adjusted_rand_score(truth, predicted))


def correct(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(N,) bool: the image's cluster maps to its class under the best one-to-one map."""
    truth, predicted = _as_labels(truth), _as_labels(predicted)
    return cluster_to_class(predicted, truth)[predicted] == truth


@dataclass(frozen=True)
class Reliability:
    """The reliability curve: per equal-width confidence bin, its images, mean confidence and
    accuracy (NaN where a bin is empty)."""

    edges: np.ndarray  # (bins + 1,) from 0 to 1
    counts: np.ndarray  # (bins,) int64
    confidence: np.ndarray  # (bins,)
    accuracy: np.ndarray  # (bins,)

    @property
    def ece(self) -> float:
        """Σ_b (n_b / N)·|acc_b − conf_b| over the non-empty bins."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((self.counts[filled] * gaps).sum() / self.counts.sum())


def reliability(truth: np.ndarray, predicted: np.ndarray, confidences: np.ndarray, bins: int = 15) -> Reliability:
    """Bin b holds the confidences in (b/bins, (b+1)/bins] (the first bin also holds 0)."""
    hits = correct(truth, predicted)
    confidences = np.asarray(confidences, dtype=np.float64).ravel()
    if confidences.shape != hits.shape or hits.size == 0:
        raise InvalidInput(f"need one confidence per image: {confidences.size} for {hits.size} images")
    if not np.isfinite(confidences).all() or confidences.min() < 0 or confidences.max() > 1:
        raise InvalidInput("confidences must lie in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidences, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):  # empty bins are NaN
        mean_confidence = np.bincount(index, confidences, minlength=bins) / counts
        mean_accuracy = np.bincount(index, hits.astype(np.float64), minlength=bins) / counts
    return Reliability(edges, counts, mean_confidence, mean_accuracy)


def expected_calibration_error(truth: np.ndarray, predicted: np.ndarray, confidences: np.ndarray,
                               bins: int = 15) -> float:
    """ECE of confidences read as P(cluster is right), correctness after Hungarian matching."""
    return reliability(truth, predicted, confidences, bins).ece


def evaluate(truth: np.ndarray, predicted: np.ndarray, confidences: np.ndarray | None = None) -> dict[str, float]:
    """ACC, NMI and ARI in one dict, the form every report uses, plus the ECE given confidences."""
    scores = {"acc": accuracy(truth, predicted), "nmi": nmi(truth, predicted), "ari": ari(truth, predicted)}
    if confidences is not None:
        scores["ece"] = expected_calibration_error(truth, predicted, confidences)
    return scores


def _as_labels(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values).astype(np.int64).ravel()
    if array.size and array.min() < 0:
        raise InvalidInput("labels must be non-negative integers")
    return array
