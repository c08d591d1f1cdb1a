import math

import torch

from core.losses import logit_penalty, mutual_information_loss, swapped_prediction_loss


def one_hot(indices: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(indices), classes).float()


def hand_joint() -> tuple[torch.Tensor, torch.Tensor]:
    """Four samples whose joint over (y, u) is [[1/4, 1/4], [0, 1/2]]: one cell is zero."""
    return one_hot([0, 0, 1, 1], 2), one_hot([0, 1, 1, 1], 2)


def test_mutual_information_loss_is_minus_mi_at_beta_one():
    p_y, p_u = hand_joint()
    # I = Σ P log P/(P(y)P(u)) with P(y) = (1/2, 1/2), P(u) = (1/4, 3/4)
    mi = 0.25 * math.log(2) + 0.25 * math.log(2 / 3) + 0.5 * math.log(4 / 3)
    assert math.isclose(float(mutual_information_loss(p_y, p_u, beta=1.0)), -mi, rel_tol=1e-6)


def test_mutual_information_loss_weights_the_marginal_entropy_by_beta():
    p_y, p_u = hand_joint()
    difference = mutual_information_loss(p_y, p_u, beta=4.0) - mutual_information_loss(p_y, p_u, beta=1.0)
    assert math.isclose(float(difference), -3 * math.log(2), rel_tol=1e-6)  # −3·H(Y)


def test_mutual_information_loss_matches_soft_formula():
    g = torch.Generator().manual_seed(0)
    p_y = torch.softmax(torch.randn(32, 3, generator=g), 1)
    p_u = torch.softmax(torch.randn(32, 7, generator=g), 1)
    joint = (p_y.T @ p_u).double() / 32
    outer = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    mi = float((joint * (joint / outer).log()).sum())
    assert math.isclose(float(mutual_information_loss(p_y, p_u, beta=1.0)), -mi, rel_tol=1e-4)


def test_mutual_information_loss_and_gradient_are_finite_with_zero_cells():
    p_y, p_u = hand_joint()
    p_y.requires_grad_(True)
    p_u = torch.cat([p_u, torch.zeros(4, 3)], 1)  # three prototypes nobody uses
    loss = mutual_information_loss(p_y, p_u, beta=4.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(p_y.grad).all()


def test_logit_penalty_counts_only_the_excess_over_five():
    assert math.isclose(float(logit_penalty(torch.tensor([[6.0, -7.0, 1.0]]))), 0.03, rel_tol=1e-6)
    assert math.isclose(float(logit_penalty(torch.tensor([[6.0, 0.0], [0.0, 0.0]]))), 0.005, rel_tol=1e-6)
    assert float(logit_penalty(torch.tensor([[5.0, -5.0, 0.0]]))) == 0.0


def test_swapped_prediction_is_the_mean_cross_entropy_over_pairs():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(4, 6, generator=g) * 2 - 1 for _ in range(3)]
    codes = [torch.softmax(torch.randn(4, 6, generator=g), 1) for _ in range(2)]
    expected = []
    for s in range(2):
        for t in range(3):
            if t != s:
                expected.append(-(codes[s] * torch.log_softmax(scores[t] / 0.1, 1)).sum(1).mean())
    loss = swapped_prediction_loss(codes, scores, temperature=0.1)
    torch.testing.assert_close(loss, torch.stack(expected).mean())
    assert len(expected) == 4  # 2 code crops × 2 other crops
