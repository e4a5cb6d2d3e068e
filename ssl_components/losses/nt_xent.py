"""NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR (Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Mean NT-Xent over the 2B anchors of a batch of B positive pairs (z1[i], z2[i]).

    For anchor i the positive is its other view; the 2B - 2 other embeddings are the negatives.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(0, b)]).to(z.device)
    return F.cross_entropy(logits, targets)
