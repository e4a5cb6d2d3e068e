"""SimCLR: two augmented views, a projection head, NT-Xent with in-batch negatives."""

from __future__ import annotations

import torch

from ssl_components.config import PretrainConfig
from ssl_components.distributed import gather
from ssl_components.heads import ProjectionHead
from ssl_components.losses import nt_xent
from ssl_components.methods.base import Method


class SimCLR(Method):
    name = "simclr"
    views = "pair"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.projector = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.temperature = cfg.temperature

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(views[:2])
        z = self.projector(self.backbone(x))
        z1, z2 = z.chunk(2)
        # every rank's embeddings: the negatives are the whole global batch's (nothing changes in one process)
        return nt_xent(gather(z1), gather(z2), self.temperature), z1.detach()
