"""cluster() with k omitted: train once, choose k, re-cluster; and predictors of re-clusterings."""

from pathlib import Path

import numpy as np
import pytest

from core.config import ClusterConfig
from core.pipeline import cluster
from core.predict import load_model, save_model
from core.recluster import recluster, reclustered_predictor
from tests.core.conftest import striped_images


def test_kmeans_with_k_omitted_finds_the_three_classes() -> None:
    images, truth = striped_images(per_class=15, size=16)
    result = cluster(images, ClusterConfig(method="kmeans", k_max=8), labels=truth, device="cpu")
    assert result.k_choice is not None and result.k_choice.k == 3 and result.k_choice.k_max == 8
    assert result.config.k is None and result.centres.shape == (3, 256)
    assert result.metrics is not None and result.metrics["acc"] == 1.0
    assert result.predictor is not None and result.predictor.k == 3


@pytest.mark.parametrize("method", ["imc", "mmdc"])
def test_deep_run_with_k_omitted_predicts_its_own_labels_after_save_and_load(method: str, tmp_path: Path) -> None:
    images, truth = striped_images(per_class=8, size=16)
    config = ClusterConfig(method=method, k_max=6, epochs=1, batch_size=24, backbone="vgg")  # type: ignore[arg-type]
    result = cluster(images, config, labels=truth, device="cpu")
    assert result.k_choice is not None
    k = result.k_choice.k
    assert 2 <= k <= 6 and len(result.centres) == k and result.config.k is None
    assert result.labels.shape == (24,) and set(result.labels.tolist()) <= set(range(k))
    assert [pair[0] for pair in result.k_choice.scores] == list(range(2, 7))
    save_model(result, tmp_path / "model.pt")
    predictor = load_model(tmp_path / "model.pt")
    assert predictor.k == k
    labels, confidences = predictor(images)
    assert np.array_equal(labels, result.labels)
    np.testing.assert_allclose(confidences, result.confidences, atol=1e-4)


def test_a_run_with_k_omitted_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    images, _ = striped_images(per_class=8, size=16)
    config = ClusterConfig(method="mmdc", k_max=5, epochs=2, batch_size=24, backbone="vgg")
    first = cluster(images, config, device="cpu", checkpoint=tmp_path / "run.ckpt")
    again = cluster(images, config, device="cpu", checkpoint=tmp_path / "run.ckpt")
    assert again.resumed_from_epoch == 2 and np.array_equal(again.labels, first.labels)


@pytest.mark.parametrize("method", ["kmeans", "imc"])
def test_reclustered_predictor_of_a_k_given_run_reproduces_the_reclustering(method: str, tmp_path: Path) -> None:
    images, _ = striped_images(per_class=8, size=16)
    config = ClusterConfig(k=3, method=method, epochs=1, batch_size=24, backbone="vgg")  # type: ignore[arg-type]
    result = cluster(images, config, device="cpu")
    assert result.predictor is not None
    clustering = recluster(result.embeddings, 4, seed=1)
    save_model(reclustered_predictor(result.predictor, clustering), tmp_path / "k4.pt")
    labels, confidences = load_model(tmp_path / "k4.pt")(images)
    assert np.array_equal(labels, clustering.labels)
    np.testing.assert_allclose(confidences, clustering.confidences, atol=1e-4)
