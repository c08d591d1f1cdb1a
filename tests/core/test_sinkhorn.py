import math

import pytest
import torch

from core.assign import sinkhorn, sinkhorn_log_plan


@pytest.fixture
def scores() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(64, 10, generator=g) * 2 - 1  # (B, K) cosines


def test_sinkhorn_plan_columns_are_exact_after_each_iteration(scores):
    plan = sinkhorn_log_plan(scores, epsilon=0.05, iterations=3).exp()  # (K, B)
    torch.testing.assert_close(plan.sum(0), torch.full((64,), 1 / 64))


def test_sinkhorn_plan_reaches_both_marginals(scores):
    plan = sinkhorn_log_plan(scores, epsilon=0.05, iterations=100).exp()  # (K, B)
    torch.testing.assert_close(plan.sum(1), torch.full((10,), 1 / 10), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(plan.sum(0), torch.full((64,), 1 / 64), rtol=1e-4, atol=1e-6)


def test_sinkhorn_plan_rows_are_exact_before_the_column_step(scores):
    # the marginal of the last row scaling, i.e. the plan of iterations=1 before its column step
    log_plan = scores.T / 0.05
    log_plan = log_plan - torch.logsumexp(log_plan.flatten(), 0)
    log_plan = log_plan - torch.logsumexp(log_plan, 1, keepdim=True) - math.log(10)
    torch.testing.assert_close(log_plan.exp().sum(1), torch.full((10,), 1 / 10))


def test_sinkhorn_codes_rows_sum_to_one_and_balance(scores):
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert codes.shape == (64, 10)
    torch.testing.assert_close(codes.sum(1), torch.ones(64))
    # 3 iterations leave the prototype masses within ~20 % of B/K (the reference's setting)
    assert (codes.sum(0) / (64 / 10) - 1).abs().max() < 0.25


@pytest.mark.parametrize("value", [1e4, -1e4, 0.0, 0.5])
def test_sinkhorn_is_finite_for_extreme_and_equal_scores(value):
    scores = torch.full((8, 5), value)
    scores[0, 0] = -value  # one extreme outlier in the other direction
    codes = sinkhorn(scores, epsilon=0.05, iterations=3)
    assert torch.isfinite(codes).all()
    torch.testing.assert_close(codes.sum(1), torch.ones(8))


def test_sinkhorn_equal_scores_give_uniform_codes():
    codes = sinkhorn(torch.zeros(6, 4), epsilon=0.05, iterations=3)
    torch.testing.assert_close(codes, torch.full((6, 4), 0.25))
