"""SwAV's Sinkhorn-Knopp codes and swapped-prediction loss (Caron et al., NeurIPS 2020)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float, iters: int) -> torch.Tensor:
    """Soft codes (B, K) for prototype scores (B, K): Q = exp(scores / epsilon), then alternately rescale so
    every prototype gets mass B/K and every sample sums to 1 (the last step, so rows sum to 1 exactly;
    prototype totals approach B/K as `iters` grows). No gradient flows through the codes.

    Computed in the log domain: the same result as the reference code's exp-domain loop, without its float32
    overflow (exp(scores / epsilon) is inf once scores / epsilon passes ~88) or underflow to all-zero columns.
    """
    b, k = scores.shape
    log_q = scores.detach().float() / epsilon
    for _ in range(iters):
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(k)  # each prototype -> 1/K
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(b)  # each sample -> 1/B
    return torch.exp(log_q) * b


def swav_loss(scores_per_view: list[torch.Tensor], global_views: int, temperature: float, epsilon: float, iters: int) -> torch.Tensor:
    """Swapped prediction: the codes of each of the first `global_views` views predict every other view's
    softmax(scores / temperature); cross-entropy averaged over the batch and over (code view, other view) pairs."""
    codes = [sinkhorn(s, epsilon, iters) for s in scores_per_view[:global_views]]
    log_probs = [F.log_softmax(s.float() / temperature, dim=-1) for s in scores_per_view]
    terms = [-(q * lp).sum(dim=-1).mean() for i, q in enumerate(codes) for j, lp in enumerate(log_probs) if i != j]
    return torch.stack(terms).mean()
