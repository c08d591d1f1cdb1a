import numpy as np
import pytest

from core.metrics import accuracy, ari, evaluate, expected_calibration_error, nmi, reliability, top5_accuracy


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


def test_ece_is_zero_when_each_bin_confidence_equals_its_accuracy():
    # clusters 0 and 1 map to classes 0 and 1; the 0.5-confidence bin is right half the time
    truth = np.array([0, 0, 1, 1, 0, 1])
    predicted = np.array([0, 0, 1, 1, 1, 1])  # image 4 is wrong
    confidences = np.array([1.0, 1.0, 1.0, 1.0, 0.5, 0.5])
    assert expected_calibration_error(truth, predicted, confidences) == pytest.approx(0.0)


def test_ece_matches_hand_count():
    # all right; confidences 0.9 (bin 14) and 0.6 (bin 9): gaps 0.1 and 0.4, weighted 3/4 and 1/4
    truth = np.array([0, 0, 1, 1])
    confidences = np.array([0.9, 0.9, 0.9, 0.6])
    assert expected_calibration_error(truth, truth, confidences) == pytest.approx(0.75 * 0.1 + 0.25 * 0.4)


def test_ece_counts_a_cluster_without_a_class_as_wrong():
    truth = np.array([0, 0, 0, 0])
    predicted = np.array([0, 0, 0, 1])  # cluster 1 has no class left to map to
    assert expected_calibration_error(truth, predicted, np.ones(4)) == pytest.approx(0.25)


def test_reliability_bins_are_equal_width_and_right_closed():
    curve = reliability(np.zeros(3, int), np.zeros(3, int), np.array([0.0, 1 / 15, 1.0]))
    assert curve.counts[0] == 2 and curve.counts[-1] == 1 and curve.counts.sum() == 3
    assert np.isnan(curve.accuracy[1]) and curve.accuracy[0] == 1.0


def test_ece_rejects_confidences_outside_the_unit_interval_or_of_another_length():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error(np.array([0, 1]), np.array([0, 1]), np.array([0.5, 1.5]))
    with pytest.raises(ValueError, match="one confidence per image"):
        expected_calibration_error(np.array([0, 1]), np.array([0, 1]), np.array([0.5]))


def test_evaluate_adds_ece_given_confidences():
    scores = evaluate(np.array([0, 1]), np.array([1, 0]), np.array([1.0, 1.0]))
    assert set(scores) == {"acc", "nmi", "ari", "ece"} and scores["ece"] == pytest.approx(0.0)
