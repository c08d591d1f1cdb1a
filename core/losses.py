"""Loss terms of IMC-SwAV (algorithms.md §2.4, §2.5): small pure functions, tensors in and out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOG_FLOOR = 1e-12  # probabilities are clamped here before a log, so a zero cell never gives 0·(−inf)


def swapped_prediction_loss(
    codes: list[torch.Tensor], scores: list[torch.Tensor], temperature: float
) -> torch.Tensor:
    """SwAV's swapped prediction (Caron et al. 2020, Eq. 1; IMC-SwAV Eq. 1).

    codes[s]: (B, K') Sinkhorn codes of crop s (the first len(codes) crops have codes).
    scores[t]: (B, K') prototype scores (cosines) of every crop t.
    Mean over the pairs s ≠ t of the cross-entropy −Σ_j q_s[b, j] log softmax(u_t / τ)[b, j],
    averaged over the batch. log_softmax is exact, so no clamp (the reference clamps at 1e-17).
    """
    terms = []
    for s, q in enumerate(codes):
        for t, u in enumerate(scores):
            if t != s:
                log_p = F.log_softmax(u.float() / temperature, dim=1)  # (B, K')
                terms.append(-(q * log_p).sum(1).mean())
    return torch.stack(terms).mean()


def mutual_information_loss(
    p_y: torch.Tensor, p_u: torch.Tensor, beta: float = 4.0, floor: float = LOG_FLOOR
) -> torch.Tensor:
    """H(Y|U) − β·H(Y) from the empirical joint of two batched distributions (IMC-SwAV Eq. 6).

    p_y: (N, C) classifier probabilities; p_u: (N, K') prototype probabilities.
    With β = 1 this is exactly −I(Y; U). Logs are clamped at `floor` (the reference does not
    clamp and turns an underflowed joint cell into NaN, algorithms.md §4 IMC 2).
    """
    return joint_information_loss(p_y.float().T @ p_u.float(), beta, floor)  # joint (C, K')


def joint_information_loss(joint: torch.Tensor, beta: float = 4.0, floor: float = LOG_FLOOR) -> torch.Tensor:
    """H(Y|U) − β·H(Y) of an unnormalised joint (C, K') of Y and U, as mutual_information_loss."""
    joint = joint / joint.sum()
    marginal_y = joint.sum(1, keepdim=True)  # (C, 1)
    marginal_u = joint.sum(0, keepdim=True)  # (1, K')
    log_joint = joint.clamp_min(floor).log()
    conditional = (joint * (marginal_u.clamp_min(floor).log() - log_joint)).sum()  # H(Y|U)
    neg_entropy_y = (joint * marginal_y.clamp_min(floor).log()).sum()  # −H(Y)
    return conditional + beta * neg_entropy_y


def logit_penalty(logits: torch.Tensor, threshold: float = 5.0, weight: float = 0.01) -> torch.Tensor:
    """weight · mean_n Σ_c max(0, |y_nc| − threshold): keeps classifier logits in a sane range."""
    return weight * F.relu(logits.float().abs() - threshold).sum(1).mean()
