"""SimSiam: the negative-cosine loss against its definition, stop-gradient, learning and resume."""

import torch
from methodkit import check_learns, check_resume, check_step

from ssl_components.losses import negative_cosine
from ssl_components.methods.simsiam import SimSiam


def slow_negative_cosine(p, z):
    """-mean_i p_i . z_i / (|p_i| |z_i|), one row and one dimension at a time."""
    total = 0.0
    for i in range(len(p)):
        dot = sum(float(p[i, d] * z[i, d]) for d in range(p.shape[1]))
        norm_p = sum(float(p[i, d]) ** 2 for d in range(p.shape[1])) ** 0.5
        norm_z = sum(float(z[i, d]) ** 2 for d in range(p.shape[1])) ** 0.5
        total += -dot / (norm_p * norm_z)
    return total / len(p)


def test_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    p, z = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    assert abs(negative_cosine(p, z).item() - slow_negative_cosine(p, z)) < 1e-6
    assert negative_cosine(z, 3 * z).item() == torch.tensor(-1.0).item()  # aligned: the minimum, scale-free


def test_gradient_does_not_flow_into_z():
    p = torch.randn(4, 3, requires_grad=True)
    z = torch.randn(4, 3, requires_grad=True)
    negative_cosine(p, z).backward()
    assert z.grad is None  # stop-gradient: z is a constant target
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_registered_and_one_step():
    check_step("simsiam", SimSiam)


def test_short_run_learns_without_collapse(tmp_path):
    check_learns(tmp_path, "simsiam")


def test_resume_matches_an_uninterrupted_run(tmp_path):
    check_resume(tmp_path, "simsiam")
