"""BYOL's normalised mean-squared error between prediction and target projection (Grill et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z), averaged over the batch; in [0, 4].

    `z` (the target network's projection) is detached here, inside the loss, so no gradient reaches the
    target branch. The symmetric BYOL loss is byol_loss(p1, z2) / 2 + byol_loss(p2, z1) / 2.
    """
    return (2 - 2 * F.cosine_similarity(p.float(), z.detach().float(), dim=1)).mean()
