"""MoCo v2: the queue InfoNCE loss, the momentum key encoder, the negative queue, learning and resume."""

import math

import pytest
import torch
import torch.nn.functional as F
from methodkit import bar_images, check_learns, check_resume, check_step, settings

from ssl_components.backbones import normalize
from ssl_components.losses import infonce_with_queue
from ssl_components.methods import build_method
from ssl_components.methods.moco import MoCo
from ssl_components.methods.momentum import cosine_momentum
from ssl_components.training import CHECKPOINT, _optimizer


def _slow_infonce(q, k, queue, t):
    """Row by row: -log softmax of [q.k_i, q.negatives] at the positive, negatives = queue or other keys."""
    q, k = F.normalize(q.double(), dim=1), F.normalize(k.double(), dim=1)
    total = 0.0
    for i in range(len(q)):
        negatives = queue.double() if len(queue) else torch.stack([k[j] for j in range(len(k)) if j != i])
        logits = [float(q[i] @ k[i]) / t] + [float(q[i] @ n) / t for n in negatives]
        total += -math.log(math.exp(logits[0]) / sum(math.exp(v) for v in logits))
    return total / len(q)


def test_loss_matches_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    queue = F.normalize(torch.randn(7, 4, generator=g), dim=1)
    assert infonce_with_queue(q, k, queue, 0.2).item() == pytest.approx(_slow_infonce(q, k, queue, 0.2), rel=1e-5)
    empty = torch.zeros(0, 4)  # no queue: the other keys of the batch are the negatives
    assert infonce_with_queue(q, k, empty, 0.5).item() == pytest.approx(_slow_infonce(q, k, empty, 0.5), rel=1e-5)
    q.requires_grad_(True)
    k.requires_grad_(True)
    infonce_with_queue(q, k, queue, 0.2).backward()
    assert q.grad is not None and k.grad is None  # keys are detached inside the loss


def _method(*overrides):
    torch.manual_seed(0)
    return build_method(settings("moco", *overrides).pretrain, 1)


def _batch(n=4, seed=0):
    x, _ = bar_images(n, seed=seed)
    return [normalize(x), normalize(x.flip(-1))]


def test_key_encoder_is_frozen_and_follows_the_cosine_ema():
    method = _method("pretrain.queue_size=16", "pretrain.weight_decay=0.5")
    assert isinstance(method, MoCo)
    key_params = list(method.key_backbone.parameters()) + list(method.key_projector.parameters())
    assert key_params and not any(p.requires_grad for p in key_params)
    opt = _optimizer(settings("moco", "pretrain.weight_decay=0.5").pretrain, method.parameters())
    before = [p.clone() for p in key_params]
    online_before = method.projector[0].weight.clone()
    loss, z = method.training_step(_batch(8))
    loss.backward()
    opt.step()  # AdamW with weight decay: must leave the key encoder alone
    for p, b in zip(key_params, before):
        assert torch.equal(p, b)
    assert not torch.equal(method.projector[0].weight, online_before)

    online = [p.clone() for p in list(method.backbone.parameters()) + list(method.projector.parameters())]
    method.after_step(0.3)
    m = cosine_momentum(0.99, 0.3)
    assert 0.99 < m < 1 and cosine_momentum(0.99, 0.0) == pytest.approx(0.99) and cosine_momentum(0.99, 1.0) == 1.0
    for p, b, o in zip(key_params, before, online):
        torch.testing.assert_close(p, m * b + (1 - m) * o)


def test_queue_holds_the_latest_keys_and_the_pointer_wraps():
    method = _method("pretrain.queue_size=10")
    assert method.queue.shape == (10, 16) and int(method.queue_ptr) == 0
    first, second = _batch(4, seed=0), _batch(4, seed=1)  # 2 x 4 = 8 keys enqueued per step

    old = method.queue.clone()
    loss, _ = method.training_step(first)
    keys1 = method.keys(torch.cat(first))  # key encoder unchanged (no after_step): the same keys again
    q1, q2 = method.projector(method.backbone(torch.cat(first))).chunk(2)
    k1, k2 = keys1.chunk(2)
    expected = infonce_with_queue(q1, k2, old, 0.2) / 2 + infonce_with_queue(q2, k1, old, 0.2) / 2
    torch.testing.assert_close(loss, expected)  # the step's negatives are the queue before its own keys
    torch.testing.assert_close(method.queue[:8], keys1)
    torch.testing.assert_close(method.queue[8:], old[8:])
    assert int(method.queue_ptr) == 8

    method.training_step(second)
    keys2 = method.keys(torch.cat(second))
    torch.testing.assert_close(method.queue[8:], keys2[:2])
    torch.testing.assert_close(method.queue[:6], keys2[2:])
    torch.testing.assert_close(method.queue[6:8], keys1[6:8])
    assert int(method.queue_ptr) == 6
    torch.testing.assert_close(method.queue.norm(dim=1), torch.ones(10))

    keys = F.normalize(torch.randn(13, 16), dim=1)  # more keys than the queue holds
    method.enqueue(keys)
    assert int(method.queue_ptr) == (6 + 13) % 10
    expected = {(6 + j) % 10: j for j in range(13)}  # slot -> the last key written there in turn
    for slot, j in expected.items():
        torch.testing.assert_close(method.queue[slot], keys[j])


def test_without_a_queue_the_batch_keys_are_the_negatives():
    method = _method("pretrain.queue_size=0")
    loss, z = method.training_step(_batch(4))
    assert torch.isfinite(loss) and loss.item() > 0.1 and z.shape == (4, 16)
    assert method.queue.shape == (0, 16) and int(method.queue_ptr) == 0


def test_registered_and_one_step():
    check_step("moco", MoCo)


def test_learns_on_bar_images(tmp_path):
    # 64 keys per step fill the queue after one step. Note: epoch 1's loss is lowered by the random initial
    # queue (easy negatives); with a much larger queue the loss first rises while real keys replace them.
    check_learns(tmp_path, "moco", ["pretrain.queue_size=64"])


def test_resume_restores_the_key_encoder_and_queue(tmp_path):
    check_resume(tmp_path, "moco", ["pretrain.queue_size=48"])  # 48: the pointer wraps mid-step
    model = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["model"]
    assert {"queue", "queue_ptr"} <= model.keys() and any(k.startswith("key_backbone.") for k in model)
    assert int(model["queue_ptr"]) == (2 * 2 * 64) % 48  # 2 epochs x 2 steps x 64 keys, wrapped
