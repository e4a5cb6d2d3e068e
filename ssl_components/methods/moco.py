"""MoCo v2: a momentum key encoder and a queue of negative keys (He et al., CVPR 2020; Chen et al., 2020).

Symmetric loss: each view is a query for the other view's key. Both views' keys (2B per step) are enqueued
after the loss is computed, so a step's negatives are always keys of earlier batches. With queue_size 0 the
other keys of the same batch are the negatives instead (see `infonce_with_queue`). There is no shuffle-BN
(the reference code's cross-GPU guard against BatchNorm leaking batch statistics) on a single device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_components.config import PretrainConfig
from ssl_components.distributed import gather, gather_nograd
from ssl_components.heads import ProjectionHead
from ssl_components.losses import infonce_with_queue
from ssl_components.methods.base import Method
from ssl_components.methods.momentum import cosine_momentum, momentum_copy, update_momentum


class MoCo(Method):
    name = "moco"
    views = "pair"
    queue: torch.Tensor  # buffers
    queue_ptr: torch.Tensor

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.projector = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
        self.key_backbone = momentum_copy(self.backbone)
        self.key_projector = momentum_copy(self.projector)
        self.temperature = cfg.temperature
        self.base_momentum = cfg.ema_momentum
        # Random unit vectors until real keys replace them, as in the reference code.
        self.register_buffer("queue", F.normalize(torch.randn(cfg.queue_size, cfg.proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projector(self.key_backbone(x)).float(), dim=1)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write `keys` one after another over the oldest entries (ring buffer); with more keys than the queue
        holds, the newest queue_size survive, where writing them all in turn would leave them."""
        size, n = self.queue.shape[0], len(keys)
        if size == 0:
            return
        keep = min(n, size)
        idx = (self.queue_ptr + n - keep + torch.arange(keep, device=keys.device)) % size
        self.queue[idx] = keys[n - keep :].to(self.queue.dtype)
        self.queue_ptr.copy_((self.queue_ptr + n) % size)

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        q1, q2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        k1, k2 = self.keys(torch.cat(views[:2])).chunk(2)
        # the global batch on every rank: the same loss as one process, and the same keys enqueued everywhere
        q1, q2, k1, k2 = gather(q1), gather(q2), gather_nograd(k1), gather_nograd(k2)
        queue = self.queue.clone()  # this step's negatives; a copy, as autograd keeps it for backward
        t = self.temperature
        loss = infonce_with_queue(q1, k2, queue, t) / 2 + infonce_with_queue(q2, k1, queue, t) / 2
        self.enqueue(torch.cat([k1, k2]))
        return loss, q1.detach()

    def after_step(self, progress: float) -> None:
        m = cosine_momentum(self.base_momentum, progress)
        update_momentum(self.backbone, self.key_backbone, m)
        update_momentum(self.projector, self.key_projector, m)
