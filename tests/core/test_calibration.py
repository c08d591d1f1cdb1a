import numpy as np
import pytest
import torch

from core.calibration import (
    DIMS,
    FULL_MAX_K,
    SAMPLE,
    CalibratedReadout,
    Calibration,
    calibrate,
    co_assignment,
    posterior,
    projected,
    reduce,
)
from core.config import ClusterConfig
from core.kmeans import distance_confidence, distance_scale, kmeans
from core.metrics import expected_calibration_error
from core.pipeline import cluster


def blobs(sizes: list[int], separation: float, dims: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes (unit variance) whose means are `separation` apart on average."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(sizes), dims)) * separation / np.sqrt(2)
    truth = np.concatenate([np.full(size, c) for c, size in enumerate(sizes)])
    return (means[truth] + rng.normal(size=(len(truth), dims))).astype(np.float32), truth


def kmeans_run(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """A run's labels and raw confidences: the pixel baseline's read-out on x."""
    fit = kmeans(torch.from_numpy(x), k, generator=torch.Generator().manual_seed(0), restarts=3)
    return fit.labels.numpy(), distance_confidence(fit.distances, distance_scale(fit.distances)).numpy()


def test_separated_unequal_classes_get_confidence_near_one():
    x, truth = blobs([300, 120, 60], separation=12.0)
    labels, raw = kmeans_run(x, 3)
    confidences, _ = calibrate(raw, x, labels, 3)
    assert confidences.min() >= 0.98 and expected_calibration_error(truth, labels, confidences) <= 0.02


@pytest.mark.parametrize(("sizes", "separation", "dims"), [
    ([200] * 4, 3.0, 4),  # the raw softmax is already within 0.06 here
    ([300] * 10, 1.5, 16),  # bench.calibration's overlapping toy: the raw softmax is far off
])
def test_overlapping_classes_get_calibrated_confidences(sizes: list[int], separation: float, dims: int):
    x, truth = blobs(sizes, separation=separation, dims=dims)
    labels, raw = kmeans_run(x, len(sizes))
    confidences, _ = calibrate(raw, x, labels, len(sizes))
    before = expected_calibration_error(truth, labels, raw)
    after = expected_calibration_error(truth, labels, confidences)
    assert after <= 0.1
    if before > 0.2:
        assert after < before / 2


def test_calibration_keeps_the_raw_order_and_the_unit_interval():
    x, _ = blobs([150] * 3, separation=3.0)
    labels, raw = kmeans_run(x, 3)
    confidences, calibration = calibrate(raw, x, labels, 3)
    assert ((confidences >= 0) & (confidences <= 1)).all()
    order = np.argsort(raw, kind="stable")
    assert (np.diff(confidences[order]) >= 0).all()  # non-decreasing in the raw score
    assert (np.diff(calibration(np.array([0.0, 0.5, 1.0]))) > 0).all()  # strictly: ties keep their order


def test_calibration_is_deterministic_per_seed():
    x, _ = blobs([100] * 3, separation=3.0)
    labels, raw = kmeans_run(x, 3)
    assert np.array_equal(calibrate(raw, x, labels, 3, seed=1)[0], calibrate(raw, x, labels, 3, seed=1)[0])


def test_images_a_run_put_in_the_wrong_cluster_get_a_low_posterior():
    x, truth = blobs([200] * 3, separation=12.0)
    labels = truth.copy()
    moved = np.flatnonzero(truth == 0)[:20]
    labels[moved] = 1  # the run's mistake: 20 images of blob 0 in cluster 1
    index, estimate = posterior(x, labels, 3, seed=0)
    assert np.array_equal(index, np.arange(600))  # fewer images than the sample: all of them
    assert estimate[moved].max() < 0.1 and np.delete(estimate, moved).min() > 0.9


def test_a_cluster_that_merged_two_separated_classes_gets_about_half():
    x, truth = blobs([200] * 4, separation=12.0)
    labels = truth.copy()
    labels[truth == 3] = 2  # the run's mistake: blobs 2 and 3 in one cluster
    labels[np.flatnonzero(truth == 0)[::2]] = 3  # and blob 0 cut in two, so k is still 4
    _, estimate = posterior(x, labels, 4, seed=0)
    # mixtures started from k-means++ find the four blobs and beat, by far, the fits started at
    # the run's clusters; in them an image of cluster 2 shares its component with half its mates
    assert estimate[labels == 2] == pytest.approx(0.5, abs=0.05)
    assert estimate[labels == 1].min() > 0.95


def test_co_assignment_is_the_share_of_cluster_mates_in_the_images_component():
    responsibilities = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.5, 0.5]])
    column = np.array([0, 0, 0, 1, 1])  # cluster 0: two in component 0, one in 1; cluster 1: split
    assert co_assignment(responsibilities, column, 2) == pytest.approx([2 / 3, 2 / 3, 1 / 3, 0.75, 0.5])


def test_posterior_does_not_depend_on_the_cluster_names():
    x, _ = blobs([100] * 3, separation=3.0)
    labels, _ = kmeans_run(x, 3)
    renamed = np.array([2, 0, 1])[labels]
    estimate, of_renamed = posterior(x, labels, 3, seed=0)[1], posterior(x, renamed, 3, seed=0)[1]
    assert estimate == pytest.approx(of_renamed, abs=1e-3)  # EM stops at its tolerance, in its own order


def test_many_clusters_use_the_diagonal_mixture_and_stay_calibrated():
    k = FULL_MAX_K + 8
    x, truth = blobs([30] * k, separation=12.0, dims=16)
    labels, raw = kmeans_run(x, k)
    confidences, _ = calibrate(raw, x, labels, k)
    assert expected_calibration_error(truth, labels, confidences) <= 0.1


def test_known_labels_never_reach_the_calibration():
    images = np.random.default_rng(0).integers(0, 256, size=(60, 8, 8), dtype=np.uint8)
    images[:30] //= 4  # two groups: dark and bright
    truth = np.repeat([0, 1], 30)
    config = ClusterConfig(k=2, method="kmeans")
    scored = cluster(images, config, labels=truth, device="cpu")
    blind = cluster(images, config, device="cpu")
    assert np.array_equal(scored.confidences, blind.confidences) and scored.metrics is not None


def test_a_single_knot_maps_every_score_to_its_value():
    calibration = Calibration(np.array([0.7]), np.array([1.0]))
    assert calibration(np.array([0.2, 0.9])) == pytest.approx([0.99 + 0.002, 0.99 + 0.009])


class Constant(torch.nn.Module):
    """A read-out that labels everything 0 with raw confidence 0.5, and embeds to zeros."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("unused", torch.zeros(1))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(images), 2)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(len(images), dtype=torch.int64), torch.full((len(images),), 0.5)


def test_calibrated_readout_maps_the_base_confidence_and_embeds_as_the_base():
    readout = CalibratedReadout(Constant(), Calibration(np.array([0.0, 1.0]), np.array([0.2, 0.8])))
    labels, confidences = readout(torch.zeros(3, 1, 4, 4, dtype=torch.uint8))
    assert labels.tolist() == [0, 0, 0] and confidences.numpy() == pytest.approx([0.99 * 0.5 + 0.005] * 3)
    assert readout.embed(torch.zeros(3, 1, 4, 4)).shape == (3, 2)


@pytest.mark.parametrize(("n", "d"), [(30, 3072), (12, 768), (500, 768), (500, 16)])
def test_the_mixture_sees_no_more_dimensions_than_rows_or_dims(n, d):
    # a tiny job of wide pixels kept all of them (3,072) and fitted full covariances of that size
    x = np.random.default_rng(0).random((n, d))
    reduced = reduce(x, seed=0)
    assert reduced.shape == (n, min(d, DIMS, n))
    assert np.allclose(np.linalg.norm(reduced, axis=1), 1, atol=1e-5)
    confidences, _ = calibrate(np.random.default_rng(1).random(n), x, np.arange(n) % 3, 3)
    assert confidences.shape == (n,) and np.all((confidences >= 0) & (confidences <= 1))


@pytest.mark.parametrize(("n", "d"), [(200, 64), (SAMPLE + 7, 40), (50, 20)])
def test_projected_features_keep_the_posterior_the_features_give(n, d):
    # MMDC hands calibration its backbone's features projected once for all rows; the mixture
    # then sees what it would have seen on the features themselves
    x, _ = blobs([n // 2, n - n // 2], separation=2.0, dims=d)
    labels, _ = kmeans_run(x, 2)
    space = projected(x, seed=0)
    assert space.shape == (n, min(d, DIMS)) and space.dtype == np.float32
    index, direct = posterior(x, labels, 2, seed=0)
    same_index, via_space = posterior(space, labels, 2, seed=0)
    assert np.array_equal(index, same_index)
    np.testing.assert_allclose(via_space, direct, atol=1e-3)
