"""Choosing k for IMC-SwAV by classifier heads fitted to its prototype distributions."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from core.calibration import CalibratedReadout, Calibration
from core.errors import InvalidInput
from core.kheads import (
    DENSE_UP_TO,
    FIT_SAMPLE,
    ClassifierHead,
    HeadReadout,
    candidates,
    choose_k_by_heads,
    chosen_k,
    fit_noise,
    head_at,
    imc_readout_of,
    kept_note,
)
from core.predictor import Predictor
from core.recluster import recluster, reclustered_predictor
from tests.core.test_recluster import blobs


def prototype_codes(x: np.ndarray, prototypes: int = 60, temperature: float = 0.1, seed: int = 0) -> torch.Tensor:
    """Soft assignments of unit features to random points of the set, as IMC's prototypes see them."""
    unit = torch.nn.functional.normalize(torch.as_tensor(x).float(), dim=1)
    chosen = unit[torch.randperm(len(unit), generator=torch.Generator().manual_seed(seed))[:prototypes]]
    return torch.softmax(unit @ chosen.T / temperature, dim=1)


def test_candidates_are_every_small_k_then_a_grid_up_to_k_max() -> None:
    assert candidates(6) == [2, 3, 4, 5, 6]
    wide = candidates(50)
    assert wide[: DENSE_UP_TO - 1] == list(range(2, DENSE_UP_TO + 1)) and wide[-1] == 50
    assert all(a < b for a, b in itertools.pairwise(wide))
    assert candidates(1000)[-1] == 1000 and len(candidates(1000)) < 60  # each head costs k columns


@pytest.mark.parametrize("k", [4, 7])
def test_heads_find_the_number_of_separated_clusters_and_label_them(k: int) -> None:
    x, truth = blobs(k=k, per=40, d=32, seed=k)
    chosen = choose_k_by_heads(x, prototype_codes(x), 12, beta=4.0, seed=0)
    assert chosen.choice.k == k and chosen.choice.k_max == 12
    assert [pair[0] for pair in chosen.choice.scores] == list(range(2, 13))
    assert adjusted_rand_score(truth, chosen.labels) == 1.0
    assert chosen.centres.shape == (k, 32) and chosen.confidences.shape == (len(x),)
    with torch.no_grad():  # the head alone labels the same features
        labels, confidences = chosen.head(torch.as_tensor(x))
    assert np.array_equal(labels.numpy(), chosen.labels)
    np.testing.assert_allclose(confidences.numpy(), chosen.confidences, atol=1e-6)
    json.dumps(chosen.choice.to_dict(), allow_nan=False)  # -inf scores are stored as null


def test_the_choice_is_the_same_for_the_same_seed() -> None:
    x, _ = blobs(k=5, per=30, d=16, seed=1)
    codes = prototype_codes(x)
    first, again = (choose_k_by_heads(x, codes, 10, beta=4.0, seed=3) for _ in range(2))
    assert first.choice == again.choice and np.array_equal(first.labels, again.labels)


def test_head_readout_applies_the_head_to_the_base_embedding() -> None:
    x, _ = blobs(k=3, per=20, d=8, seed=2)
    chosen = choose_k_by_heads(x, prototype_codes(x, prototypes=20), 6, beta=4.0)

    class Identity(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))  # a state entry: the device is read from it

        def embed(self, images: torch.Tensor) -> torch.Tensor:
            return images.float()

    with torch.no_grad():
        labels, _ = HeadReadout(Identity(), chosen.head)(torch.as_tensor(x))
    assert np.array_equal(labels.numpy(), chosen.labels)


def test_too_few_images_or_mismatched_codes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="N >= 3"):
        choose_k_by_heads(np.ones((2, 4), np.float32), torch.ones(2, 5) / 5, 10, beta=4.0)
    with pytest.raises(InvalidInput, match="codes"):
        choose_k_by_heads(np.ones((6, 4), np.float32), torch.ones(5, 5) / 5, 10, beta=4.0)


def nearest_mean_classifier(x: np.ndarray, truth: np.ndarray) -> torch.nn.Module:
    """A 'trained classifier': logits of the nearest class mean (an MLP's last Linear is what
    ClassifierHead reads its k from)."""
    means = torch.stack([torch.as_tensor(x[truth == c]).mean(0) for c in np.unique(truth)])
    linear = torch.nn.Linear(x.shape[1], len(means))
    with torch.no_grad():
        linear.weight.copy_(10 * means)
        linear.bias.copy_(-5 * (means**2).sum(1))
    return torch.nn.Sequential(torch.nn.Identity(), linear)


class PrototypeReadout(torch.nn.Module):
    """IMC-SwAV's read-out as re-clustering sees it: features are the images, `codes` their
    soft assignment to fixed prototypes (random points of the set), `net.classifier` the run's."""

    def __init__(self, x: np.ndarray, classifier: torch.nn.Module, prototypes: int = 60):
        super().__init__()
        unit = torch.nn.functional.normalize(torch.as_tensor(x).float(), dim=1)
        order = torch.randperm(len(unit), generator=torch.Generator().manual_seed(0))
        self.prototypes = torch.nn.Parameter(unit[order[:prototypes]])
        self.net = torch.nn.Module()
        self.net.classifier = classifier
        self.temperature = 0.1

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.float()

    def codes(self, features: torch.Tensor) -> torch.Tensor:
        unit = torch.nn.functional.normalize(features.float(), dim=1)
        return torch.softmax(unit @ self.prototypes.T / self.temperature, dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.classifier(images.float()).argmax(1), torch.ones(len(images))


def test_imc_readout_is_found_under_its_wrappers_and_others_have_none() -> None:
    x, truth = blobs(k=3, per=10, d=8)
    base = PrototypeReadout(x, nearest_mean_classifier(x, truth))
    identity = Calibration(np.array([0.0, 1.0]), np.array([0.0, 1.0]))
    wrapped = CalibratedReadout(HeadReadout(base, torch.nn.Linear(8, 3)), identity)
    assert imc_readout_of(wrapped) is base and imc_readout_of(torch.nn.Linear(2, 2)) is None
    assert imc_readout_of(None) is None


def test_the_run_s_own_classifier_is_the_candidate_of_its_training_k() -> None:
    x, truth = blobs(k=5, per=40, d=32, seed=7)
    trained = ClassifierHead(nearest_mean_classifier(x, truth))
    assert trained.k == 5
    chosen = choose_k_by_heads(x, prototype_codes(x), 8, beta=4.0, trained=trained)
    assert chosen.choice.k == 5 and chosen.head is trained
    assert adjusted_rand_score(truth, chosen.labels) == 1.0
    again = head_at(x, prototype_codes(x), 5, beta=4.0, trained=trained)  # re-clustering at k = 5
    assert again.head is trained and np.array_equal(again.labels, chosen.labels)


def test_a_head_replaces_the_run_s_classifier_only_by_a_significant_margin() -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(0.2, 0.1, 3000)  # per-point silhouettes of the classifier's partition (k = 10)
    noise = np.tile([0.05, -0.05], 1500)  # per point, around a mean gain of 0.0005: 0.55 standard errors
    points = {10: base, 7: base + 0.0005 + noise, 12: base - 0.01}
    assert chosen_k(points, trained_k=10) == 10  # 7 is higher by noise: the plateau keeps the classifier
    assert chosen_k(points, trained_k=None) == 7  # without a trained candidate, the plain best
    points[4] = base + 0.02 + noise  # 22 standard errors
    assert chosen_k(points, trained_k=10) == 4  # clearly higher: the head wins
    assert chosen_k({10: base}, trained_k=10) == 10 and chosen_k({7: base}, trained_k=10) == 7


def test_a_gain_within_the_spread_of_fits_keeps_the_classifier() -> None:
    rng = np.random.default_rng(1)
    base = rng.normal(0.2, 0.1, 3000)
    points = {10: base, 4: base + 0.02 + np.tile([0.05, -0.05], 1500), 12: base - 0.01}  # 22 point errors
    # one fit's mean silhouette moves by 0.01 between starts: a gain of 0.02 is 1.4 of the
    # difference's standard errors, below z = 1.96 (2.5 %: Bonferroni over 2 candidates)
    assert chosen_k(points, trained_k=10, fit_sd=0.01) == 10
    assert chosen_k(points, trained_k=10, fit_sd=0.002) == 4  # a gain far past a small spread wins


def test_the_record_says_why_a_lower_scoring_classifier_was_kept() -> None:
    scores = [(2, 0.19), (6, 0.213), (10, 0.187), (11, 0.2), (50, -math.inf)]
    note = kept_note(scores, 10, trained_k=10)
    assert note == ("k = 6 scored highest (0.213), but not above the run's own classifier (k = 10, 0.187) "
                    "by more than the spread between fits allows")
    # a head that beat the classifier significantly, though another scored higher without doing so
    assert kept_note(scores, 11, trained_k=10) == f"{note}; the head at k = 11 (0.200) did"
    assert kept_note(scores, 6, trained_k=10) is None and kept_note(scores, 11, trained_k=None) is None


def test_fit_noise_pools_the_spread_of_each_k_s_restarts() -> None:
    def restart(mean: float) -> np.ndarray:
        return np.full(50, mean)

    per_restart = {5: [restart(0.20), restart(0.22), restart(0.24)],  # variance 4e-4
                   7: [restart(0.10), None, restart(0.12)],  # variance 2e-4: a restart that is no partition is left out
                   9: [restart(0.3), None, None]}  # one partition: no spread to measure
    assert fit_noise(per_restart) == pytest.approx(np.sqrt(3e-4))
    assert fit_noise({5: [restart(0.2), None, None]}) == 0.0


def test_a_trained_classifier_that_splits_the_clusters_gives_way_to_their_number() -> None:
    x, truth = blobs(k=4, per=40, d=32, seed=3)
    split = truth * 2 + np.arange(len(truth)) % 2  # the run's classifier cut every cluster in two at random
    trained = ClassifierHead(nearest_mean_classifier(x, split))
    choice = choose_k_by_heads(x, prototype_codes(x), 10, beta=4.0, trained=trained)
    assert trained.k == 8 and choice.choice.k == 4 and adjusted_rand_score(truth, choice.labels) == 1.0


def test_a_head_fitted_at_another_k_labels_separated_clusters() -> None:
    x, truth = blobs(k=5, per=40, d=32, seed=4)
    trained = ClassifierHead(nearest_mean_classifier(x[:40 * 3], truth[:40 * 3]))  # k = 3
    fitted = head_at(x, prototype_codes(x), 5, beta=4.0, seed=0, trained=trained)
    assert fitted.head is not trained and fitted.centres.shape == (5, 32)
    assert adjusted_rand_score(truth, fitted.labels) == 1.0
    with torch.no_grad():
        labels, _ = fitted.head(torch.as_tensor(x))
    assert np.array_equal(labels.numpy(), fitted.labels)
    with pytest.raises(InvalidInput, match="k=201 needs"):
        head_at(x, prototype_codes(x), 201, beta=4.0)


def test_a_head_reads_only_its_fit_sample_s_codes_and_fits_as_from_the_full_table() -> None:
    x, truth = blobs(k=4, per=2000, d=16, seed=2)  # 8,000 rows: more than the 5,000 a head fits on
    table = prototype_codes(x)
    asked: list[int] = []

    def codes(index: torch.Tensor) -> torch.Tensor:
        asked.append(len(index))
        return table[index]

    lazy, full = head_at(x, codes, 4, beta=4.0, seed=1), head_at(x, table, 4, beta=4.0, seed=1)
    assert asked == [FIT_SAMPLE] and np.array_equal(lazy.labels, full.labels)
    trained = ClassifierHead(nearest_mean_classifier(x, truth))
    assert head_at(x, codes, 4, beta=4.0, trained=trained).head is trained and asked == [FIT_SAMPLE]


def test_recluster_of_an_imc_run_is_its_classifier_at_its_training_k_and_a_fitted_head_elsewhere() -> None:
    x, truth = blobs(k=6, per=40, d=32, seed=5)
    readout = PrototypeReadout(x, nearest_mean_classifier(x, truth))
    clustering = recluster(x, 6, labels=truth, readout=readout, beta=4.0)
    assert isinstance(clustering.head, ClassifierHead) and clustering.metrics is not None
    assert clustering.metrics["nmi"] == pytest.approx(1.0)
    assert ((clustering.confidences >= 0) & (clustering.confidences <= 1)).all()
    run = Predictor(readout, image_size=1, channels=1, k=6, method="imc", precision="fp32")
    predictor = reclustered_predictor(run, clustering)
    assert isinstance(imc_readout_of(predictor.readout), PrototypeReadout) and predictor.k == 6
    with torch.no_grad():
        labels, confidences = predictor.readout(torch.as_tensor(x))
    assert np.array_equal(labels.numpy(), clustering.labels)
    np.testing.assert_allclose(confidences.numpy(), clustering.confidences, atol=1e-5)
    other = recluster(x, 4, readout=readout, beta=4.0)  # another k: a head fitted at 4
    assert other.head is not None and not isinstance(other.head, ClassifierHead)
    assert len(np.unique(other.labels)) == 4
    with torch.no_grad():
        labels, _ = reclustered_predictor(run, other).readout(torch.as_tensor(x))
    assert np.array_equal(labels.numpy(), other.labels)


def test_recluster_falls_back_to_kmeans_where_the_classifier_leaves_a_cluster_empty() -> None:
    x, truth = blobs(k=4, per=30, d=16, seed=6)
    classifier = nearest_mean_classifier(x, truth)
    with torch.no_grad():
        classifier[1].bias[3] -= 1e6  # cluster 3 never wins
    clustering = recluster(x, 4, labels=truth, readout=PrototypeReadout(x, classifier), beta=4.0)
    assert clustering.head is None and set(clustering.labels.tolist()) == {0, 1, 2, 3}
    assert clustering.metrics is not None and clustering.metrics["nmi"] == pytest.approx(1.0)


def test_a_read_out_pickled_without_its_temperature_is_reclustered_by_kmeans() -> None:
    x, truth = blobs(k=4, per=30, d=16, seed=8)
    readout = PrototypeReadout(x, nearest_mean_classifier(x, truth))
    del readout.temperature  # as an IMC-SwAV read-out saved before round 10
    assert imc_readout_of(readout) is None
    clustering = recluster(x, 4, labels=truth, readout=readout, beta=4.0)
    assert clustering.head is None and np.array_equal(clustering.labels, recluster(x, 4).labels)
