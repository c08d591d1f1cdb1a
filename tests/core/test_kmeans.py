import numpy as np
import torch

from core.kmeans import kmeans
from core.metrics import accuracy
from core.refine import align_labels


def blobs(seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [10, 0], [0, 10], [10, 10]], dtype=np.float32)
    labels = np.repeat(np.arange(4), 50)
    points = centres[labels] + rng.normal(0, 0.5, (200, 2)).astype(np.float32)
    return torch.from_numpy(points), labels


def test_kmeans_finds_blobs():
    points, labels = blobs()
    fit = kmeans(points, 4, generator=torch.Generator().manual_seed(0))
    assert accuracy(labels, fit.labels.numpy()) == 1.0
    assert fit.centres.shape == (4, 2)


def test_kmeans_is_deterministic_per_seed():
    points, _ = blobs(1)
    first = kmeans(points, 4, generator=torch.Generator().manual_seed(3))
    second = kmeans(points, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(first.labels, second.labels)


def test_kmeans_never_leaves_a_cluster_empty_with_duplicates():
    points = torch.tensor([[0.0, 0.0]] * 10 + [[1.0, 1.0]] * 10 + [[5.0, 5.0]])
    fit = kmeans(points, 3, generator=torch.Generator().manual_seed(0))
    assert torch.bincount(fit.labels, minlength=3).min() > 0


def test_align_labels_keeps_previous_ids():
    previous = np.array([0, 0, 1, 1, 2, 2])
    renamed = np.array([2, 2, 0, 0, 1, 1])
    assert (align_labels(renamed, previous, 3) == previous).all()


def test_kmeans_centres_are_ordered_like_the_previous_labels():
    from core.refine import kmeans_centres

    points, labels = blobs(2)
    previous = torch.from_numpy((labels + 1) % 4)  # some other naming of the same four blobs
    centres = kmeans_centres(points, previous, 4, generator=torch.Generator().manual_seed(0), restarts=2)
    nearest = torch.cdist(points, centres).argmin(1)
    assert torch.equal(nearest, previous)
