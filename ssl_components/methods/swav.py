"""SwAV: swapped prediction of Sinkhorn-Knopp cluster codes across multi-crop views (Caron et al., NeurIPS 2020).

Backbone + projector (L2-normalised output) + prototypes (a bias-free linear layer whose rows are
re-normalised to unit length before every step). Codes come from the two global views' scores, with equal
prototype mass enforced within the batch (pretrain.sinkhorn_epsilon, pretrain.sinkhorn_iters); every view's
softmax(scores / pretrain.temperature) is trained to predict the codes of the other views. No feature queue:
with the small batches of a CPU run the equipartition is only enforced within each batch, a known SwAV
trade-off (the paper adds a queue for batches under ~256; one can be added here as a buffer). Also left out:
freezing the prototypes during the first epoch.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_components.config import PretrainConfig
from ssl_components.distributed import gather
from ssl_components.heads import ProjectionHead
from ssl_components.losses import swav_loss
from ssl_components.methods.base import Method


class SwAV(Method):
    name = "swav"
    views = "multicrop"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.projector = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.prototypes = nn.Linear(cfg.proj_dim, cfg.num_prototypes, bias=False)
        self.temperature, self.epsilon, self.iters = cfg.temperature, cfg.sinkhorn_epsilon, cfg.sinkhorn_iters

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projector(self.backbone(x)), dim=1)

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))
        z_global = self.embed(torch.cat(views[:2]))
        scores = list(self.prototypes(z_global).chunk(2))
        if len(views) > 2:
            scores += self.prototypes(self.embed(torch.cat(views[2:]))).chunk(len(views) - 2)
        # Sinkhorn's equal prototype mass over the global batch: every rank's scores (the same in one process)
        loss = swav_loss([gather(s) for s in scores], 2, self.temperature, self.epsilon, self.iters)
        return loss, z_global.chunk(2)[0].detach()
