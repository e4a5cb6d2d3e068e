"""Momentum (EMA) target networks and BYOL's cosine momentum schedule (Grill et al., NeurIPS 2020)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy with requires_grad=False: the optimiser never updates it (no grad, so no weight decay)."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def cosine_momentum(base: float, progress: float) -> float:
    """m = 1 - (1 - base) * (cos(pi * progress) + 1) / 2: `base` at progress 0, rising to 1 at progress 1."""
    progress = min(max(float(progress), 0.0), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def update_momentum(model: nn.Module, ema_model: nn.Module, m: float) -> None:
    """ema <- m * ema + (1 - m) * model, parameter by parameter (the modules must have the same structure).

    Buffers (BatchNorm running statistics) are not averaged: as in MoCo's reference code they track the EMA
    model's own forward passes, and in training mode BatchNorm uses batch statistics anyway.
    """
    for p, e in zip(model.parameters(), ema_model.parameters(), strict=True):
        e.mul_(m).add_(p.detach(), alpha=1.0 - m)
