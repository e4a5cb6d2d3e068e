"""BYOL: an online network with a predictor regresses an EMA target network's projection (Grill et al., NeurIPS 2020).

Online = backbone + projector + predictor; target = momentum copy of backbone + projector, updated after
each optimiser step with a momentum annealed from pretrain.ema_momentum to 1 (cosine). Symmetric loss:
the mean of the two views' normalised-MSE terms. The target runs in the same train/eval mode as the online
network (BatchNorm on batch statistics during training, as in the paper).
"""

from __future__ import annotations

import torch

from ssl_components.config import PretrainConfig
from ssl_components.heads import ProjectionHead
from ssl_components.losses import byol_loss
from ssl_components.methods.base import Method
from ssl_components.methods.momentum import cosine_momentum, momentum_copy, update_momentum


class BYOL(Method):
    name = "byol"
    views = "pair"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.projector = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)
        self.target_backbone = momentum_copy(self.backbone)
        self.target_projector = momentum_copy(self.projector)
        self.base_momentum = cfg.ema_momentum

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(views[:2])
        z = self.projector(self.backbone(x))
        p1, p2 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_backbone(x)).chunk(2)
        loss = byol_loss(p1, t2) / 2 + byol_loss(p2, t1) / 2
        return loss, z.chunk(2)[0].detach()

    def after_step(self, progress: float) -> None:
        m = cosine_momentum(self.base_momentum, progress)
        update_momentum(self.backbone, self.target_backbone, m)
        update_momentum(self.projector, self.target_projector, m)
