import math

import torch

from ssl_components.losses import nt_xent


def slow_nt_xent(z1, z2, t):
    """The SimCLR paper's definition, one anchor at a time."""
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n


def test_matches_direct_computation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for t in (0.1, 0.5, 1.0):
        assert abs(nt_xent(z1, z2, t).item() - slow_nt_xent(z1, z2, t)) < 1e-5


def test_identical_views_beat_random_pairs():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(32, 16, generator=g)
    aligned = nt_xent(z, z + 0.01 * torch.randn(32, 16, generator=g), 0.2)
    shuffled = nt_xent(z, torch.randn(32, 16, generator=g), 0.2)
    assert aligned < shuffled
    assert aligned < math.log(63) < shuffled  # log(2B-1): the loss of uniform similarities


def test_gradient_flows_to_both_views():
    z1 = torch.randn(4, 3, requires_grad=True)
    z2 = torch.randn(4, 3, requires_grad=True)
    nt_xent(z1, z2, 0.5).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
