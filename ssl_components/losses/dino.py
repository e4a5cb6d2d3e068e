"""DINO's self-distillation cross-entropy over multi-crop view pairs (Caron et al., ICCV 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dino_loss(
    student_out: list[torch.Tensor], teacher_out: list[torch.Tensor], center: torch.Tensor, student_temp: float, teacher_temp: float
) -> torch.Tensor:
    """Mean over pairs (teacher view i, student view j), i != j, of H(softmax((t_i - center) / teacher_temp),
    softmax(s_j / student_temp)), each averaged over the batch.

    `student_out` lists every view's (B, K) logits with the global views first, in the same order as
    `teacher_out` (the global views only), so index i is the same view in both. The teacher is detached here.
    """
    targets = [F.softmax((t.detach().float() - center) / teacher_temp, dim=-1) for t in teacher_out]
    log_probs = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_out]
    terms = [-(q * lp).sum(dim=-1).mean() for i, q in enumerate(targets) for j, lp in enumerate(log_probs) if i != j]
    return torch.stack(terms).mean()
