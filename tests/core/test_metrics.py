import numpy as np
import pytest

from core.metrics import accuracy, ari, evaluate, nmi, top5_accuracy


def test_accuracy_is_invariant_to_renaming_clusters():
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert accuracy(truth, np.array([2, 2, 0, 0, 1, 1])) == 1.0


def test_accuracy_matches_hand_count():
    # clusters {0: a a b}, {1: b b c}, {2: c}: best map 0->a, 1->b, 2->c gives 2 + 2 + 1 = 5 of 7
    truth = np.array([0, 0, 1, 1, 1, 2, 2])
    predicted = np.array([0, 0, 0, 1, 1, 1, 2])
    assert accuracy(truth, predicted) == pytest.approx(5 / 7)


def test_accuracy_pads_when_cluster_and_class_counts_differ():
    truth = np.array([0, 0, 0, 0])
    predicted = np.array([0, 1, 2, 3])
    assert accuracy(truth, predicted) == pytest.approx(0.25)


def test_nmi_is_arithmetic_normalised():
    # truth splits 4 images 2/2; prediction puts all in one cluster: I = 0, so NMI = 0
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])) == pytest.approx(0.0)
    # H(Y) = ln 2, H(C) = ln 4 (four singletons), I = ln 2: NMI = ln2 / ((ln2 + ln4) / 2) = 2/3
    assert nmi(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 3])) == pytest.approx(2 / 3)


def test_ari_perfect_and_chance():
    assert ari(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)
    # one pair agrees in both, the ARI of this split is -0.5 (hand-computed from the pair counts)
    assert ari(np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == pytest.approx(-0.5)


def test_top5_counts_any_of_the_five_best_clusters():
    truth = np.array([0, 1])
    scores = np.array([[9, 1, 0, 0, 0, 0, 0], [9, 1, 0, 0, 0, 0, 0]], dtype=float)
    # cluster 0 maps to class 0 (tie broken by the matching); class 1's image has cluster 1 in its top 5
    assert top5_accuracy(truth, scores) == 1.0


def test_evaluate_reports_all_three():
    assert set(evaluate(np.array([0, 1]), np.array([1, 0]))) == {"acc", "nmi", "ari"}


def test_negative_labels_are_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        accuracy(np.array([-1, 0]), np.array([0, 0]))
