"""Shared checks for the pretext-task tests (rotation, jigsaw, autoencoders): synthetic "intact vs scrambled"
objects and a short pretraining run whose kNN accuracy must beat the random-init encoder. Builds on methodkit.

Import from a test module with `from pretextkit import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import methodkit
import torch
from methodkit import check_resume, settings  # noqa: F401  (re-exported for the pretext tests)

from ssl_components.training import CHECKPOINT

SIZE = 16
# lr 0.005 and mild crops (each part stays in its 8x8 quadrant, i.e. in its 2x2 jigsaw tile); 40 epochs of 4
# steps: with 4-8 epochs (the default lr's cosine schedule) jigsaw and the autoencoders do not yet beat the
# random-init encoder. The whole run takes 1-2 s.
PRETEXT = ["pretrain.lr=0.005", "cache_views.crop_scale=[0.8,1.0]"]
EPOCHS = 40


def _part(img: torch.Tensor, kind: int, r: int, c: int, v: int) -> None:
    """Draw part `kind` (0 horizontal bar, 1 vertical bar, 2 square, 3 ring) with top-left corner (r, c)."""
    h, w = ((2, 6), (6, 2), (4, 4), (5, 5))[kind]
    img[r : r + h, c : c + w] = v
    if kind == 3:
        img[r + 1 : r + 4, c + 1 : c + 4] = 0


def layout_images(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, 16, 16) objects of four parts (two bars, a square, a ring), one per 8x8 quadrant, on a noisy
    background, and labels: 0 intact (the parts in their canonical layout), 1 scrambled (another layout).

    Parts jitter by up to 2 px and vary in brightness. Intact objects have a clear layout and "up", so a
    rotation, jigsaw or reconstruction model learns it; a random encoder mostly sees which parts are present,
    and both classes have the same ones."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 60, (n, 1, SIZE, SIZE), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 2
    for i in range(n):
        layout = list(range(4))
        while y[i] == 1 and layout == [0, 1, 2, 3]:
            layout = torch.randperm(4, generator=g).tolist()
        for q, kind in enumerate(layout):
            jr, jc = (int(t) for t in torch.randint(0, 3, (2,), generator=g))
            _part(x[i, 0], kind, (q // 2) * 8 + jr, (q % 2) * 8 + jc, int(torch.randint(150, 256, (1,), generator=g)))
    return x, y


def check_learns(tmp_path, method: str, overrides=(), epochs: int = EPOCHS, margin: float = 0.1) -> dict:
    """methodkit's learning check on layout images with the pretext settings."""
    return methodkit.check_learns(tmp_path, method, [*PRETEXT, *overrides], epochs, margin, images=layout_images)


def check_pretext_resume(tmp_path, method: str, overrides=()) -> dict:
    """methodkit's save -> resume check with the pretext settings; returns the resumed checkpoint's model."""
    check_resume(tmp_path, method, [*PRETEXT, *overrides])
    return torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["model"]


def slow_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean cross-entropy by an explicit loop: -(logit of the label - log sum exp of the row), in float64."""
    total = 0.0
    for row, label in zip(logits.double().tolist(), labels.tolist()):
        top = max(row)
        log_sum_exp = top + torch.tensor([v - top for v in row], dtype=torch.float64).exp().sum().log().item()
        total += log_sum_exp - row[label]
    return total / len(labels)
