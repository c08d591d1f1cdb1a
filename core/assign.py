"""Assignment solvers shared by the methods: exact (Hungarian) and entropic (Sinkhorn-Knopp)."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def hungarian(cost: np.ndarray) -> np.ndarray:
    """Minimum-cost matching of rows to columns: perm[i] is the column given to row i.

    Square costs give a permutation; for R < C rows each row gets a distinct column.
    """
    rows, cols = linear_sum_assignment(np.asarray(cost, dtype=np.float64))
    perm = np.full(cost.shape[0], -1, dtype=np.int64)
    perm[rows] = cols
    return perm


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, *, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Balanced soft codes for a batch (SwAV, Caron et al. 2020, Alg. 1), in the log domain.

    scores: (B, K) similarities. Returns codes (B, K) whose rows sum to 1 and whose columns
    each carry about B/K of the mass: before the final per-sample normalisation the plan has
    row (prototype) sums 1/K and column (sample) sums 1/B. The log domain keeps it finite for
    any finite score, however extreme.
    """
    log_plan = sinkhorn_log_plan(scores, epsilon=epsilon, iterations=iterations)  # (K, B)
    return torch.softmax(log_plan, dim=0).T.contiguous()  # each sample's column sums to 1


def sinkhorn_log_plan(scores: torch.Tensor, *, epsilon: float, iterations: int) -> torch.Tensor:
    """Log of the transport plan (K, B) after `iterations` row/column scalings; columns exact."""
    batch, prototypes = scores.shape
    log_plan = scores.float().T / epsilon  # (K, B)
    log_plan = log_plan - torch.logsumexp(log_plan.flatten(), dim=0)
    for _ in range(iterations):
        # each prototype gets total weight 1/K, then each sample total weight 1/B
        log_plan = log_plan - torch.logsumexp(log_plan, dim=1, keepdim=True) - math.log(prototypes)
        log_plan = log_plan - torch.logsumexp(log_plan, dim=0, keepdim=True) - math.log(batch)
    return log_plan
