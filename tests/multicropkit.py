"""Shared checks for the multi-crop methods (DINO, SwAV): random multi-crop batches, one training step, a short
pretraining run judged by kNN against the random-init encoder, and save -> resume equivalence.

Builds on methodkit (bar images, `train`, `knn`, `check_resume`); import with `from multicropkit import ...`.
"""

from __future__ import annotations

import json

import torch
from methodkit import bar_images, check_resume, knn, settings, train

from ssl_components.backbones import load_encoder
from ssl_components.methods import build_method
from ssl_components.training import CHECKPOINT

# Two 8x8 local crops per image. lr 0.005 (not the default 0.002): at 0.002 the margin was 0-3 points. 10 epochs
# (40 steps): at 6, float rounding alone moved DINO's kNN by 6 points (0.879 in NCHW, 0.820 in channels-last);
# at 10 both methods clear the random-init encoder by 6.6-13 points in both memory layouts.
MULTICROP = ["cache_views.local_crops=2", "cache_views.local_size=8", "pretrain.lr=0.005"]
EPOCHS = 10


def multicrop_batch(batch: int = 8, locals_: int = 2, local_size: int = 8, seed: int = 0) -> list[torch.Tensor]:
    """[global 1, global 2, local 1, ...]: random images in [-1, 1], globals 16x16, locals local_size²."""
    g = torch.Generator().manual_seed(seed)
    sizes = [16, 16] + [local_size] * locals_
    return [torch.rand(batch, 1, s, s, generator=g) * 2 - 1 for s in sizes]


def check_step(method: str, cls: type) -> None:
    """The registry builds `cls`, which asks for multi-crop views; with 0 or 2 local crops (8x8 or 12x12) a step
    gives a finite scalar loss, gradients for the whole backbone, and detached (B, proj_dim) embeddings."""
    cfg = settings(method, *MULTICROP).pretrain
    for locals_, size in ((0, 8), (2, 8), (2, 12)):
        torch.manual_seed(0)
        m = build_method(cfg, 1)
        assert type(m) is cls and m.name == method and m.views == "multicrop"
        loss, z = m.training_step(multicrop_batch(8, locals_, size))
        assert loss.ndim == 0 and torch.isfinite(loss), (locals_, size)
        assert z.shape == (8, cfg.proj_dim) and not z.requires_grad
        loss.backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters()), (locals_, size)


def check_learns(tmp_path, method: str, window: int = 1, margin: float = 0.03, run=None) -> dict:
    """Pretrain EPOCHS epochs on 128 unlabelled bar images (seed 0) with MULTICROP views. Asserts: the mean loss
    of the last `window` epochs is below that of the first `window`; the embeddings keep a per-dimension std
    > 0.05 (healthy runs ~0.15; collapsed ones ~0.01, far above pretrain.collapse_std's hard stop); kNN accuracy
    (30 labelled, 256 test images, k=5) beats the same encoder at its random initial weights by `margin`.
    `run` trains instead of methodkit's `train` (the distributed tests run it under torchrun)."""
    opts = [f"pretrain.epochs={EPOCHS}", *MULTICROP]
    torch.manual_seed(0)  # pretrain seeds the same way before it builds the method: the same initial weights
    initial = build_method(settings(method, *opts).pretrain, 1).backbone
    (run or train)(tmp_path, "run", method, bar_images(128, seed=0)[0], opts)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    trained = load_encoder(tmp_path / "run" / "encoder.pt")
    labelled, test = bar_images(30, seed=1), bar_images(256, seed=2)
    losses = [h["loss"] for h in history]
    out = {
        "losses": [round(v, 3) for v in losses],
        "std": round(history[-1]["embedding_std"], 4),
        "knn_trained": knn(trained, labelled, test),
        "knn_random": knn(initial, labelled, test),
    }
    assert trained.meta["method"] == method
    assert sum(losses[-window:]) / window < sum(losses[:window]) / window, out
    assert out["std"] > 0.05, out
    assert out["knn_trained"] > out["knn_random"] + margin, out
    return out


def check_resume_multicrop(tmp_path, method: str, state_keys: list[str]) -> None:
    """methodkit.check_resume (2 epochs straight == 1 + resume: per-epoch losses and every weight and buffer),
    that `state_keys` (teacher, center, prototypes...) are in the checkpoint, and that one more step from either
    final checkpoint gives the same loss."""
    check_resume(tmp_path, method, MULTICROP)
    cfg = settings(method, *MULTICROP).pretrain
    losses = []
    for run in ("straight", "resumed"):
        state = torch.load(tmp_path / run / CHECKPOINT, weights_only=True)["model"]
        assert all(k in state for k in state_keys), sorted(state)
        m = build_method(cfg, 1)
        m.load_state_dict(state)
        losses.append(m.training_step(multicrop_batch(16, 2, 8, seed=7))[0].item())
    assert losses[0] == losses[1]
