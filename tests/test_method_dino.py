"""DINO: the multi-crop self-distillation loss, centering, the EMA teacher, learning and resume."""

import math

import pytest
import torch
from methodkit import settings
from multicropkit import MULTICROP, check_learns, check_resume_multicrop, check_step, multicrop_batch

from ssl_components.losses import dino_loss
from ssl_components.methods import build_method
from ssl_components.methods.dino import DINO
from ssl_components.methods.momentum import cosine_momentum
from ssl_components.training import _optimizer


def _slow_dino(student, teacher, center, ts, tt):
    """Pair by pair, row by row: -sum_k q_k log p_k, q = softmax((t_i - c) / tt), p = softmax(s_j / ts), i != j."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i == j:
                continue
            pair = 0.0
            for b in range(len(t)):
                tq = [math.exp((float(t[b, k]) - float(center[0, k])) / tt) for k in range(t.shape[1])]
                sp = [math.exp(float(s[b, k]) / ts) for k in range(s.shape[1])]
                pair += -sum(q / sum(tq) * math.log(p / sum(sp)) for q, p in zip(tq, sp))
            total += pair / len(t)
            pairs += 1
    return total / pairs


def test_loss_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    student = [torch.randn(5, 7, generator=g) for _ in range(4)]  # 2 global + 2 local views
    teacher = [torch.randn(5, 7, generator=g) for _ in range(2)]
    center = torch.randn(1, 7, generator=g) * 0.3
    loss = dino_loss(student, teacher, center, 0.2, 0.07)
    assert loss.item() == pytest.approx(_slow_dino(student, teacher, center, 0.2, 0.07), rel=1e-5)
    # only globals: the two cross pairs (teacher 1 -> student 2, teacher 2 -> student 1)
    assert dino_loss(student[:2], teacher, center, 0.2, 0.07).item() == pytest.approx(
        _slow_dino(student[:2], teacher, center, 0.2, 0.07), rel=1e-5
    )
    for s in student:
        s.requires_grad_(True)
    for t in teacher:
        t.requires_grad_(True)
    dino_loss(student, teacher, center, 0.2, 0.07).backward()
    assert all(s.grad is not None for s in student) and all(t.grad is None for t in teacher)  # teacher detached


def test_registry_and_one_step():
    check_step("dino", DINO)


def test_center_is_an_ema_of_the_teacher_outputs_on_global_views():
    cfg = settings("dino", *MULTICROP, "pretrain.center_momentum=0.8").pretrain
    torch.manual_seed(0)
    method = build_method(cfg, 1)
    assert torch.equal(method.center, torch.zeros(1, cfg.num_prototypes))
    for step in range(2):
        views = multicrop_batch(8, 2, 8, seed=step)
        with torch.no_grad():  # train mode (batch statistics), as in the step: the same outputs
            teacher_mean = method.teacher(torch.cat(views[:2])).mean(0, keepdim=True)
        before = method.center.clone()
        method.training_step(views)
        torch.testing.assert_close(method.center, 0.8 * before + 0.2 * teacher_mean)
    assert "center" in method.state_dict()


def test_teacher_is_frozen_and_follows_the_cosine_ema():
    cfg = settings("dino", *MULTICROP, "pretrain.weight_decay=0.5", "pretrain.ema_momentum=0.9").pretrain
    torch.manual_seed(0)
    method = build_method(cfg, 1)
    teacher = list(method.teacher_backbone.parameters()) + list(method.teacher_head.parameters())
    student = list(method.backbone.parameters()) + list(method.head.parameters())
    assert len(teacher) == len(student) and not any(p.requires_grad for p in teacher)
    assert all(torch.equal(t, s) for t, s in zip(teacher, student))  # the teacher starts as a copy

    opt = _optimizer(cfg, method.parameters())
    loss, _ = method.training_step(multicrop_batch(8, 2, 8))
    before = [p.clone() for p in teacher]
    loss.backward()
    opt.step()  # AdamW with weight decay must leave the teacher alone
    assert all(torch.equal(p, b) for p, b in zip(teacher, before))
    stepped = [p.clone() for p in student]
    assert any(not torch.equal(s, b) for s, b in zip(stepped, before))
    method.after_step(0.3)
    m = cosine_momentum(0.9, 0.3)
    assert 0.9 < m < 1
    for p, b, s in zip(teacher, before, stepped):
        torch.testing.assert_close(p, m * b + (1 - m) * s)


def test_learns_on_bar_images(tmp_path):
    # DINO's loss is not monotone (the teacher moves and sharpens); assert mean(last 2 epochs) < mean(first 2).
    print(check_learns(tmp_path, "dino", window=2))


def test_resume_restores_teacher_and_center(tmp_path):
    check_resume_multicrop(tmp_path, "dino", ["center", "teacher_backbone.features.0.0.weight", "teacher_head.last_layer.weight"])
