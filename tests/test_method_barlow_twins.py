"""Barlow Twins: the loss against its definition, its optimum, learning and resume."""

import torch
from methodkit import check_learns, check_resume, check_step

from ssl_components.losses import barlow_twins_loss
from ssl_components.methods.barlow_twins import BarlowTwins


def slow_barlow_twins(z1, z2, lambd, eps=1e-5):
    """Standardise each dimension over the batch (biased variance), C_ij = sum_b a_bi c_bj / B, then the sum."""
    b, d = z1.shape

    def standardise(z):
        cols = []
        for j in range(d):
            col = [float(z[r, j]) for r in range(b)]
            mean = sum(col) / b
            std = (sum((v - mean) ** 2 for v in col) / b + eps) ** 0.5
            cols.append([(v - mean) / std for v in col])
        return cols  # cols[j][r]

    a, c = standardise(z1), standardise(z2)
    total = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[i][r] * c[j][r] for r in range(b)) / b
            total += (1 - cij) ** 2 if i == j else lambd * cij**2
    return total


def decorrelated(b=16, d=4, seed=0):
    """(b, d) with zero-mean, mutually orthogonal columns: a perfectly decorrelated batch."""
    z = torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(z - z.mean(0))
    return (q * b**0.5).float()


def test_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g) * 3 + 1
    for lambd in (0.005, 0.1, 1.0):
        assert abs(barlow_twins_loss(z1, z2, lambd).item() - slow_barlow_twins(z1, z2, lambd)) < 1e-4


def test_identical_decorrelated_inputs_are_the_optimum():
    z = decorrelated()
    assert barlow_twins_loss(z, z, lambd=0.0).item() < 1e-6  # on-diagonal term: C_ii = 1
    assert barlow_twins_loss(z, z, lambd=1.0).item() < 1e-6  # and off-diagonal: C_ij = 0
    assert barlow_twins_loss(z * 5 + 2, z, lambd=1.0).item() < 1e-6  # per-dimension scale and shift do not matter
    correlated = torch.cat([z[:, :1], z[:, :1] + 0.1 * z[:, 1:2], z[:, 2:]], dim=1)
    assert barlow_twins_loss(correlated, correlated, lambd=0.0).item() < 1e-6
    assert barlow_twins_loss(correlated, correlated, lambd=1.0).item() > 1.0  # redundancy is penalised


def test_gradient_flows_to_both_views():
    z1 = torch.randn(8, 3, requires_grad=True)
    z2 = torch.randn(8, 3, requires_grad=True)
    barlow_twins_loss(z1, z2, 0.005).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_registered_and_one_step():
    check_step("barlow_twins", BarlowTwins)


def test_short_run_learns_without_collapse(tmp_path):
    check_learns(tmp_path, "barlow_twins")


def test_resume_matches_an_uninterrupted_run(tmp_path):
    check_resume(tmp_path, "barlow_twins")
