import numpy as np
import pytest

from core.metrics import nmi
from core.recluster import recluster


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
    assert ((result.confidences > 0.25) & (result.confidences <= 1)).all()
    assert result.centres.shape == (4, 16) and result.centres.dtype == np.float32
    assert result.metrics is not None and result.metrics["nmi"] == pytest.approx(1.0)


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
