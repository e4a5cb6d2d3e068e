"""InfoNCE against a queue of negative keys, as in MoCo v2 (He et al., CVPR 2020; Chen et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce_with_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Mean InfoNCE over B queries: for query i the positive is key i, the negatives are the K queue rows.

    q, k: (B, D), L2-normalised here; `k` is detached here (keys come from the momentum encoder and never get
    a gradient). queue: (K, D), already normalised keys of earlier batches. Logits are [q_i.k_i, q_i.queue]
    / temperature with target 0. With an empty queue (K = 0) the other keys of the batch are the negatives
    instead (MoCo v3 style: logits q @ k.T, target i), so the loss never degenerates to a constant.
    """
    q = F.normalize(q.float(), dim=1)
    k = F.normalize(k.detach().float(), dim=1)
    if queue.shape[0] == 0:
        return F.cross_entropy(q @ k.T / temperature, torch.arange(len(q), device=q.device))
    positive = (q * k).sum(dim=1, keepdim=True)  # (B, 1)
    negative = q @ queue.detach().float().T  # (B, K)
    logits = torch.cat([positive, negative], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
