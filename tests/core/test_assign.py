import numpy as np

from core.assign import hungarian


def test_hungarian_recovers_a_permutation():
    rng = np.random.default_rng(0)
    perm = rng.permutation(50)
    cost = np.ones((50, 50))
    cost[np.arange(50), perm] = 0.0
    assert (hungarian(cost) == perm).all()


def test_hungarian_minimises_total_cost_against_brute_force():
    from itertools import permutations

    rng = np.random.default_rng(1)
    cost = rng.random((5, 5))
    best = min(sum(cost[i, p[i]] for i in range(5)) for p in permutations(range(5)))
    perm = hungarian(cost)
    assert np.isclose(cost[np.arange(5), perm].sum(), best)


def test_hungarian_rectangular_gives_distinct_columns():
    cost = np.random.default_rng(2).random((3, 7))
    perm = hungarian(cost)
    assert len(set(perm.tolist())) == 3 and perm.min() >= 0
