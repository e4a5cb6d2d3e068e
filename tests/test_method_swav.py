"""SwAV: Sinkhorn-Knopp codes, the swapped-prediction loss, prototype normalisation, learning and resume."""

import math

import pytest
import torch
import torch.nn.functional as F
from methodkit import settings
from multicropkit import MULTICROP, check_learns, check_resume_multicrop, check_step, multicrop_batch

from ssl_components.losses import sinkhorn, swav_loss
from ssl_components.methods import build_method
from ssl_components.methods.swav import SwAV
from ssl_components.training import _optimizer


def _scores(b, k, d=6, seed=0):
    """Cosine similarities of random unit embeddings and prototypes, as SwAV's scores are."""
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=g), dim=1) @ F.normalize(torch.randn(k, d, generator=g), dim=1).T


def _slow_sinkhorn(scores, eps, iters):
    """Element by element in Python floats: Q = exp(S / eps) / total, then per iteration columns to 1/K, rows to 1/B."""
    b, k = scores.shape
    q = [[math.exp(float(scores[i, j]) / eps) for j in range(k)] for i in range(b)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iters):
        cols = [sum(q[i][j] for i in range(b)) for j in range(k)]
        q = [[q[i][j] / cols[j] / k for j in range(k)] for i in range(b)]
        q = [[v / sum(row) / b for v in row] for row in q]
    return [[v * b for v in row] for row in q]


@pytest.mark.parametrize("b,k", [(32, 64), (40, 8)])
def test_sinkhorn_gives_equal_prototype_mass_and_unit_rows(b, k):
    scores = _scores(b, k)
    q = sinkhorn(scores, 0.05, 100)
    assert q.shape == (b, k) and (q >= 0).all() and not q.requires_grad
    torch.testing.assert_close(q.sum(1), torch.ones(b), atol=1e-5, rtol=0)
    torch.testing.assert_close(q.sum(0), torch.full((k,), b / k), atol=1e-3 * b / k, rtol=0)
    # the default 3 iterations: rows still exact, prototype mass only closer to B/K than plain softmax's
    q3 = sinkhorn(scores, 0.05, 3)
    torch.testing.assert_close(q3.sum(1), torch.ones(b), atol=1e-5, rtol=0)
    soft = F.softmax(scores / 0.05, dim=1)
    assert (q3.sum(0) - b / k).abs().max() < (soft.sum(0) - b / k).abs().max()


def test_sinkhorn_matches_a_direct_computation():
    scores = _scores(6, 4, seed=1)
    slow = torch.tensor(_slow_sinkhorn(scores.double(), 0.1, 3), dtype=torch.float32)
    torch.testing.assert_close(sinkhorn(scores, 0.1, 3), slow, rtol=1e-4, atol=1e-6)
    # large scores / small epsilon do not overflow
    assert torch.isfinite(sinkhorn(scores * 100, 0.05, 3)).all()


def test_swapped_prediction_loss_matches_a_slow_loop():
    views = [_scores(5, 4, seed=s) for s in range(4)]  # 2 global + 2 local views
    eps, iters, temp = 0.1, 3, 0.2
    codes = [_slow_sinkhorn(v.double(), eps, iters) for v in views[:2]]
    total, pairs = 0.0, 0
    for i, q in enumerate(codes):
        for j, s in enumerate(views):
            if i == j:
                continue
            pair = 0.0
            for r in range(len(s)):
                z = sum(math.exp(float(v) / temp) for v in s[r])
                pair += -sum(q[r][c] * math.log(math.exp(float(s[r, c]) / temp) / z) for c in range(s.shape[1]))
            total += pair / len(s)
            pairs += 1
    assert swav_loss(views, 2, temp, eps, iters).item() == pytest.approx(total / pairs, rel=1e-5)
    assert pairs == 6


def test_registry_and_one_step():
    check_step("swav", SwAV)


def test_prototypes_are_renormalised_before_each_step():
    cfg = settings("swav", *MULTICROP).pretrain
    torch.manual_seed(0)
    method = build_method(cfg, 1)
    opt = _optimizer(cfg, method.parameters())
    for step in range(2):
        loss, _ = method.training_step(multicrop_batch(8, 2, 8, seed=step))
        torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(cfg.num_prototypes))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.allclose(method.prototypes.weight.norm(dim=1), torch.ones(cfg.num_prototypes))  # moved off


def test_learns_on_bar_images(tmp_path):
    print(check_learns(tmp_path, "swav", window=1))  # SwAV's loss falls steadily: last epoch < first


def test_resume_restores_the_prototypes(tmp_path):
    check_resume_multicrop(tmp_path, "swav", ["prototypes.weight"])
