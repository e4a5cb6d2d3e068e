"""What every SSL method shares: it owns a backbone and turns a batch of views into a loss.

A method declares the views it needs (`views`), not how they are made; the training loop, checkpointing and
evaluation are shared. Anything a method keeps between steps (EMA weights, queues, prototypes) is a
parameter or buffer of the module, so it is saved and restored with the checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn as nn

VIEWS = ("single", "pair", "multicrop")


class Method(nn.Module):
    name: str = "base"
    # The views a step needs, in `training_step(views)`:
    #   "single": [one augmented view] (pretext tasks and masked modelling transform it themselves)
    #   "pair": [view 1, view 2], two augmented global views of each image
    #   "multicrop": [global 1, global 2, local 1, ..., local L] (cache_views.local_crops, local_size)
    views: str = "pair"

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (loss, embeddings of the first view) for one batch; embeddings feed the collapse check."""
        raise NotImplementedError

    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The training step: DistributedDataParallel synchronises gradients of what runs through forward."""
        return self.training_step(views)

    def after_step(self, progress: float) -> None:
        """Called after every optimiser step with progress in [0, 1] (for EMA schedules etc.)."""
