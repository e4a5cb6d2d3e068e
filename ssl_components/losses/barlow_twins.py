"""Barlow Twins' redundancy-reduction loss on the cross-correlation matrix (Zbontar et al., 2021)."""

from __future__ import annotations

import torch


def _standardise(z: torch.Tensor, eps: float) -> torch.Tensor:
    # Biased (1/B) variance, like the reference code's BatchNorm1d(affine=False), so that C below is exactly the
    # Pearson correlation of each pair of dimensions (C_ii = 1 for identical inputs). The paper's pseudocode
    # uses torch.std (1/(B-1)), which makes C_ii = (B-1)/B at best.
    return (z - z.mean(0)) / (z.var(0, unbiased=False) + eps).sqrt()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.005, eps: float = 1e-5) -> torch.Tensor:
    """sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2 with C = z1n^T z2n / B, each dim standardised over the batch."""
    b = z1.shape[0]
    c = _standardise(z1.float(), eps).T @ _standardise(z2.float(), eps) / b
    on_diag = (1 - c.diagonal()).pow(2).sum()
    off_diag = c.pow(2).sum() - c.diagonal().pow(2).sum()
    return on_diag + lambd * off_diag
