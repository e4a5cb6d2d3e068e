"""VICReg: each of the three terms against its definition, the weighted sum, learning and resume."""

import pytest
import torch
from methodkit import check_learns, check_resume, check_step

from ssl_components.losses import vicreg_loss, vicreg_terms
from ssl_components.methods.vicreg import VICReg

EPS = 1e-4


def column(z, j):
    return [float(z[r, j]) for r in range(z.shape[0])]


def slow_invariance(z1, z2):
    b, d = z1.shape
    return sum(float(z1[r, j] - z2[r, j]) ** 2 for r in range(b) for j in range(d)) / (b * d)


def slow_variance(z):
    """mean_j max(0, 1 - sqrt(Var(z_j) + eps)), unbiased variance."""
    b, d = z.shape
    total = 0.0
    for j in range(d):
        col = column(z, j)
        mean = sum(col) / b
        var = sum((v - mean) ** 2 for v in col) / (b - 1)
        total += max(0.0, 1 - (var + EPS) ** 0.5)
    return total / d


def slow_covariance(z):
    """sum_{j != k} Cov(z_j, z_k)^2 / d, covariance with 1 / (b - 1)."""
    b, d = z.shape
    means = [sum(column(z, j)) / b for j in range(d)]
    total = 0.0
    for j in range(d):
        for k in range(d):
            if j != k:
                cov = sum((float(z[r, j]) - means[j]) * (float(z[r, k]) - means[k]) for r in range(b)) / (b - 1)
                total += cov**2
    return total / d


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(8, 5, generator=g) * torch.tensor([0.2, 0.5, 1.0, 2.0, 0.05])  # some dims below std 1
    z2 = z1 + 0.3 * torch.randn(8, 5, generator=g)
    z2[:, 1] += z2[:, 0]  # a correlated pair of dims
    return z1, z2


def test_invariance_term_matches_direct_computation(pair):
    z1, z2 = pair
    assert vicreg_terms(z1, z2)[0].item() == pytest.approx(slow_invariance(z1, z2), rel=1e-5)


def test_variance_term_matches_direct_computation(pair):
    z1, z2 = pair
    assert vicreg_terms(z1, z2)[1].item() == pytest.approx(slow_variance(z1) + slow_variance(z2), rel=1e-5)


def test_covariance_term_matches_direct_computation(pair):
    z1, z2 = pair
    assert vicreg_terms(z1, z2)[2].item() == pytest.approx(slow_covariance(z1) + slow_covariance(z2), rel=1e-5)


def test_loss_is_the_weighted_sum(pair):
    z1, z2 = pair
    inv, var, cov = (slow_invariance(z1, z2), slow_variance(z1) + slow_variance(z2), slow_covariance(z1) + slow_covariance(z2))
    assert vicreg_loss(z1, z2, 25.0, 25.0, 1.0).item() == pytest.approx(25 * inv + 25 * var + cov, rel=1e-5)
    assert vicreg_loss(z1, z2, 2.0, 0.0, 0.0).item() == pytest.approx(2 * inv, rel=1e-5)


def test_each_term_at_its_optimum_and_at_collapse():
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    q, _ = torch.linalg.qr(x - x.mean(0))  # zero-mean orthonormal columns
    z = (q * 2 * 15**0.5).float()  # every dimension has std 2, every covariance 0
    inv, var, cov = vicreg_terms(z, z)
    assert inv.item() == 0.0 and var.item() == 0.0 and cov.item() < 1e-10
    assert vicreg_terms(z[:, :1].repeat(1, 4), z)[2].item() == pytest.approx(12 * 4**2 / 4, rel=1e-5)  # 4 copies
    constant = torch.ones(16, 4)
    assert vicreg_terms(constant, constant)[1].item() == pytest.approx(2 * (1 - EPS**0.5), rel=1e-6)


def test_registered_and_one_step():
    check_step("vicreg", VICReg)


def test_short_run_learns_without_collapse(tmp_path):
    check_learns(tmp_path, "vicreg")


def test_resume_matches_an_uninterrupted_run(tmp_path):
    check_resume(tmp_path, "vicreg")
