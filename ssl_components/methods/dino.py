"""DINO: a student matches a momentum teacher's centred, sharpened outputs across multi-crop views (Caron et al., ICCV 2021).

Student = backbone + DINOHead, run on every view (global views in one pass, local views in another, as the
reference MultiCropWrapper groups crops by resolution); teacher = momentum copy of both, run on the two global
views only, updated after each optimiser step with a momentum annealed from pretrain.ema_momentum to 1
(cosine). The teacher's outputs are centred by `center`, an EMA (pretrain.center_momentum) of their batch
mean, and sharpened with pretrain.teacher_temp; the student uses pretrain.temperature. Left out from the
paper: the teacher-temperature warm-up, freezing the last layer in epoch 1 and gradient clipping.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_components.config import PretrainConfig
from ssl_components.distributed import gather
from ssl_components.losses import dino_loss
from ssl_components.methods.base import Method
from ssl_components.methods.momentum import cosine_momentum, momentum_copy, update_momentum


class DINOHead(nn.Module):
    """3-layer MLP (Linear-BN-GELU) -> bottleneck -> L2-norm -> weight-normalised linear layer to `out_dim` outputs.

    BatchNorm is the reference code's `use_bn_in_head`. Without it a small CNN's features are so alike across
    images at init that the centred teacher targets drift to uniform and the embeddings collapse (measured on
    the test bar images: per-dimension std 0.015 instead of ~0.15). The last layer's weight norm is fixed to 1
    (the reference code's `norm_last_layer`), so it is a linear layer on row-normalised weights.
    """

    def __init__(self, in_dim: int, hidden_dim: int, bottleneck_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)

    def embed(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(h), dim=-1)

    def logits(self, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(emb, F.normalize(self.last_layer.weight, dim=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.logits(self.embed(h))


class DINO(Method):
    name = "dino"
    views = "multicrop"
    center: torch.Tensor  # buffer

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.head = DINOHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, cfg.num_prototypes)
        self.teacher_backbone = momentum_copy(self.backbone)
        self.teacher_head = momentum_copy(self.head)
        self.register_buffer("center", torch.zeros(1, cfg.num_prototypes))
        self.base_momentum, self.center_momentum = cfg.ema_momentum, cfg.center_momentum
        self.student_temp, self.teacher_temp = cfg.temperature, cfg.teacher_temp

    @torch.no_grad()
    def teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x))

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """center <- m * center + (1 - m) * mean of this batch's teacher outputs (all global views)."""
        m = self.center_momentum
        self.center.mul_(m).add_(teacher_out.float().mean(dim=0, keepdim=True), alpha=1 - m)

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        globals_, locals_ = views[:2], views[2:]
        emb = self.head.embed(self.backbone(torch.cat(globals_)))
        student = self.head.logits(emb).chunk(2)
        if locals_:
            student += self.head(self.backbone(torch.cat(locals_))).chunk(len(locals_))
        teacher = [gather(t) for t in self.teacher(torch.cat(globals_)).chunk(2)]
        # the global batch on every rank: the same loss as one process, and the same centre on every rank
        loss = dino_loss([gather(s) for s in student], teacher, self.center, self.student_temp, self.teacher_temp)
        self.update_center(torch.cat(teacher))
        return loss, emb.chunk(2)[0].detach()

    def after_step(self, progress: float) -> None:
        m = cosine_momentum(self.base_momentum, progress)
        update_momentum(self.backbone, self.teacher_backbone, m)
        update_momentum(self.head, self.teacher_head, m)
