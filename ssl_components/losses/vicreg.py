"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce & LeCun, ICLR 2022).

Normalisation, as in the paper's Algorithm 1 (and Eq. 6, which sums the two branches' regularisers):
- invariance: F.mse_loss(z1, z2), the mean over all B*D entries (Eq. 5 as printed divides by B only; the
  published weights 25/25/1 go with the element mean of Algorithm 1 and the reference code);
- variance: v(Z) = mean_j ReLU(1 - sqrt(Var(z^j) + eps)) with the unbiased (1/(B-1)) variance, v(Z1) + v(Z2);
- covariance: c(Z) = sum of squared off-diagonal entries of the (1/(B-1)) covariance matrix / D, c(Z1) + c(Z2).
The reference code (facebookresearch/vicreg) halves the variance sum; the paper does not, and neither do we.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _variance(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - (z.var(0) + eps).sqrt()).mean()


def _covariance(z: torch.Tensor) -> torch.Tensor:
    b, d = z.shape
    z = z - z.mean(0)
    cov = z.T @ z / (b - 1)
    return (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(invariance, variance, covariance), unweighted; variance and covariance summed over both branches."""
    z1, z2 = z1.float(), z2.float()
    return (F.mse_loss(z1, z2), _variance(z1, eps) + _variance(z2, eps), _covariance(z1) + _covariance(z2))


def vicreg_loss(
    z1: torch.Tensor, z2: torch.Tensor, sim_w: float = 25.0, var_w: float = 25.0, cov_w: float = 1.0, eps: float = 1e-4
) -> torch.Tensor:
    """sim_w * invariance + var_w * variance + cov_w * covariance (the paper's lambda, mu, nu)."""
    inv, var, cov = vicreg_terms(z1, z2, eps)
    return sim_w * inv + var_w * var + cov_w * cov
