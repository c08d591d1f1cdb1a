import numpy as np
import pytest
import torch

from core.errors import InvalidInput
from core.kmeans import normalise
from core.metrics import nmi
from core.recluster import FIT_PER_CLUSTER, FIT_SAMPLE, fit_kmeans, recluster


def blobs(k: int = 4, per: int = 50, d: int = 16, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """k well-separated non-negative clusters in d dimensions (directions differ, as features do)."""
    rng = np.random.default_rng(seed)
    centres = rng.random((k, d)) * 5
    truth = np.repeat(np.arange(k), per)
    return (centres[truth] + rng.normal(scale=0.2, size=(k * per, d))).clip(0).astype(np.float32), truth


def test_recluster_recovers_blobs_with_shapes_and_scores() -> None:
    x, truth = blobs()
    result = recluster(x, 4, labels=truth)
    assert result.labels.shape == (200,) and result.labels.dtype == np.int64
    assert set(result.labels.tolist()) == {0, 1, 2, 3}
    assert result.confidences.shape == (200,) and result.confidences.dtype == np.float32
    assert ((result.confidences >= 0) & (result.confidences <= 1)).all()  # P(cluster is right)
    assert result.centres.shape == (4, 16) and result.centres.dtype == np.float32
    assert result.metrics is not None and result.metrics["nmi"] == pytest.approx(1.0)
    assert result.metrics["ece"] <= 0.05  # separated blobs, all right: confidence says so


def test_recluster_at_another_k_splits_or_merges() -> None:
    x, truth = blobs(k=6)
    two = recluster(x, 2)
    assert set(two.labels.tolist()) == {0, 1} and two.metrics is None
    # each true blob stays whole inside one of the two clusters
    assert nmi(two.labels, truth) > 0.3 and all(len(set(two.labels[truth == c])) == 1 for c in range(6))


def test_recluster_is_deterministic_per_seed() -> None:
    x, _ = blobs(k=5)
    assert np.array_equal(recluster(x, 5, seed=3).labels, recluster(x, 5, seed=3).labels)


@pytest.mark.parametrize(("k", "message"), [(1, "k=1 is out of range"), (1001, "k=1001 is out of range"),
                                            (201, "k=201 exceeds the 200 images")])
def test_recluster_refuses_bad_k(k: int, message: str) -> None:
    x, _ = blobs()
    with pytest.raises(ValueError, match=message):
        recluster(x, k)


def test_recluster_refuses_mismatched_labels() -> None:
    x, truth = blobs()
    with pytest.raises(ValueError, match="labels has 3 entries"):
        recluster(x, 4, labels=truth[:3])


def test_sampled_fit_labels_every_row_and_recovers_blobs() -> None:
    x, truth = blobs(k=4, per=500)  # 2,000 rows, a sample of 400: the sampled path
    unit = normalise(torch.from_numpy(x))
    fit = fit_kmeans(unit, 4, torch.Generator().manual_seed(0), sample_size=400)
    assert fit.labels.shape == (2000,) and fit.distances.shape == (2000, 4)
    assert set(fit.labels.tolist()) == {0, 1, 2, 3}
    assert nmi(fit.labels.numpy(), truth) == pytest.approx(1.0)
    assert torch.equal(fit.labels, fit.distances.argmin(1))  # each row at its nearest final centre


def test_sampled_fit_is_deterministic_per_seed() -> None:
    unit = normalise(torch.from_numpy(blobs(k=6, per=300, seed=1)[0]))
    first, again = (fit_kmeans(unit, 6, torch.Generator().manual_seed(5), sample_size=300) for _ in range(2))
    assert torch.equal(first.labels, again.labels) and torch.equal(first.centres, again.centres)


def test_sampled_fit_widens_a_sample_too_small_for_k() -> None:
    """A sample of 2 rows cannot hold 4 clusters: it is widened to FIT_PER_CLUSTER rows per cluster."""
    x, truth = blobs(k=4, per=FIT_PER_CLUSTER * 2)
    fit = fit_kmeans(normalise(torch.from_numpy(x)), 4, torch.Generator().manual_seed(0), sample_size=2)
    assert nmi(fit.labels.numpy(), truth) == pytest.approx(1.0)


def test_recluster_above_the_sample_size_labels_every_image() -> None:
    x, truth = blobs(k=5, per=FIT_SAMPLE // 5 + 400, d=8)  # more rows than FIT_SAMPLE
    result = recluster(x, 5, seed=2, labels=truth)
    assert result.labels.shape == (len(truth),) and set(result.labels.tolist()) == set(range(5))
    assert result.confidences.shape == (len(truth),) and np.isfinite(result.confidences).all()
    assert result.metrics is not None and result.metrics["nmi"] == pytest.approx(1.0)
    assert np.array_equal(recluster(x, 5, seed=2).labels, result.labels)


def test_a_calibration_space_changes_the_confidences_only_and_must_have_a_row_per_image() -> None:
    # MMDC jobs keep their backbone's projected features; a re-clustering calibrates there too
    x, _ = blobs(k=3, per=40)
    noise = np.random.default_rng(1).normal(size=(120, 8)).astype(np.float32)  # a space with no clusters
    plain, spaced = recluster(x, 3), recluster(x, 3, calibration_space=noise)
    assert np.array_equal(plain.labels, spaced.labels)
    assert plain.confidences.mean() >= 0.9  # the blobs' own geometry: all right, and confident
    assert spaced.confidences.mean() < plain.confidences.mean() - 0.2  # no clusters there: less sure
    with pytest.raises(InvalidInput, match="calibration_space has 119 rows for 120 embeddings"):
        recluster(x, 3, calibration_space=noise[:-1])
