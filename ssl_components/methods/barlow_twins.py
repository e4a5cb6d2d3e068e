"""Barlow Twins: make the cross-correlation of two views' embeddings the identity (Zbontar et al., ICML 2021)."""

from __future__ import annotations

import torch

from ssl_components.config import PretrainConfig
from ssl_components.distributed import gather
from ssl_components.heads import ProjectionHead
from ssl_components.losses import barlow_twins_loss
from ssl_components.methods.base import Method


class BarlowTwins(Method):
    name = "barlow_twins"
    views = "pair"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        # 3 layers as in the paper; the paper's projector is wide (8192-d), here its size is proj_hidden/proj_dim.
        self.projector = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim, layers=3)
        self.lambd = cfg.barlow_lambda

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # One forward pass for both views: BN statistics come from the joint batch; the loss standardises
        # each view's embeddings over its own half.
        z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        # statistics of the global batch (every rank's rows; the same in one process)
        return barlow_twins_loss(gather(z1), gather(z2), self.lambd), z1.detach()
