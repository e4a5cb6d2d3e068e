"""SimSiam's negative cosine similarity with stop-gradient (Chen & He, 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -cos(p, stopgrad(z)), averaged over the batch; in [-1, 1].

    `z` is detached here, inside the loss, so no gradient ever reaches the target branch: callers cannot
    forget it. The symmetric SimSiam loss is negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2.
    """
    return -F.cosine_similarity(p.float(), z.detach().float(), dim=1).mean()
