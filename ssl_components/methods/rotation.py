"""Rotation prediction (Gidaris et al., ICLR 2018): classify which of 0/90/180/270 degrees an image was turned by."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_components.config import PretrainConfig
from ssl_components.heads import ProjectionHead
from ssl_components.methods.base import Method
from ssl_components.pretext import rotations


class RotationPrediction(Method):
    """Backbone on all four rotations of every view, a small MLP head predicting the rotation, cross-entropy."""

    name = "rotation"
    views = "single"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.head = ProjectionHead(backbone.out_dim, cfg.proj_hidden, 4)

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x4, labels = rotations(views[0])
        h = self.backbone(x4)
        loss = F.cross_entropy(self.head(h), labels)
        return loss, h[: len(views[0])].detach()  # rotation 0: the features of the view itself
