"""VICReg: invariance plus explicit variance and covariance regularisers (Bardes et al., ICLR 2022)."""

from __future__ import annotations

import torch

from ssl_components.config import PretrainConfig
from ssl_components.distributed import gather
from ssl_components.heads import ProjectionHead
from ssl_components.losses import vicreg_loss
from ssl_components.methods.base import Method


class VICReg(Method):
    name = "vicreg"
    views = "pair"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        # The paper's 3-layer expander (8192-d there); here its size is proj_hidden/proj_dim.
        self.projector = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, layers=3)
        self.weights = tuple(cfg.vicreg_weights)  # invariance, variance, covariance (lambda, mu, nu)

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        # variance and covariance of the global batch (every rank's rows; the same in one process)
        return vicreg_loss(gather(z1), gather(z2), *self.weights), z1.detach()
