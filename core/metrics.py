"""Clustering quality against known classes: Hungarian-matched ACC, NMI (arithmetic), ARI."""

from __future__ import annotations

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
    truth, predicted = _as_labels(truth), _as_labels(predicted)
    if truth.size == 0:
        raise InvalidInput("accuracy needs at least one image")
    mapping = cluster_to_class(predicted, truth)
    return float((mapping[predicted] == truth).mean())


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


def evaluate(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """ACC, NMI and ARI in one dict, the form every report uses."""
    return {"acc": accuracy(truth, predicted), "nmi": nmi(truth, predicted), "ari": ari(truth, predicted)}


def _as_labels(values: np.ndarray) -> np.ndarray:
    array = np.asarray(values).astype(np.int64).ravel()
    if array.size and array.min() < 0:
        raise InvalidInput("labels must be non-negative integers")
    return array
