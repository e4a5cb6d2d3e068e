"""SimSiam: a Siamese network with a predictor and stop-gradient, no negatives (Chen & He, CVPR 2021)."""

from __future__ import annotations

import torch

from ssl_components.config import PretrainConfig
from ssl_components.heads import ProjectionHead
from ssl_components.losses import negative_cosine
from ssl_components.methods.base import Method


class SimSiam(Method):
    name = "simsiam"
    views = "pair"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        # The paper's projector: 3 layers, BN on every output including the last (no affine there).
        self.projector = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, layers=3, last_bn=True)
        self.predictor = ProjectionHead(cfg.proj_dim, cfg.pred_hidden, cfg.proj_dim)

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.projector(self.backbone(torch.cat(views[:2])))
        p = self.predictor(z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        loss = negative_cosine(p1, z2) / 2 + negative_cosine(p2, z1) / 2  # stop-gradient on z inside the loss
        return loss, z1.detach()
