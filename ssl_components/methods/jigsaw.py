"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016), simplified: predict how an image's tiles were shuffled."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ssl_components.config import PretrainConfig
from ssl_components.errors import ConfigError
from ssl_components.heads import ProjectionHead
from ssl_components.methods.base import Method
from ssl_components.pretext import StepRNG, jigsaw_permutations, shuffle_tiles


class Jigsaw(Method):
    """Whole-image variant: the view is cut into jigsaw_grid² tiles, shuffled by one of a fixed set of
    jigsaw_permutations far-apart permutations, and the backbone sees the reassembled image; a small MLP head
    predicts the permutation index. (The paper instead encodes each tile separately with shared weights.)

    The permutation set is a buffer (saved in checkpoints); the per-step draws come from `StepRNG`."""

    name = "jigsaw"
    views = "single"
    perms: torch.Tensor  # buffer

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.grid = cfg.jigsaw_grid
        n_tiles = self.grid**2
        if cfg.jigsaw_permutations > math.factorial(n_tiles):
            raise ConfigError(
                f"pretrain.jigsaw_permutations={cfg.jigsaw_permutations} exceeds the {math.factorial(n_tiles)} "
                f"permutations of a {self.grid}x{self.grid} grid; lower it or raise pretrain.jigsaw_grid"
            )
        self.register_buffer("perms", jigsaw_permutations(n_tiles, cfg.jigsaw_permutations, seed=0))
        self.head = ProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.jigsaw_permutations)
        self.rng = StepRNG()

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        shuffled, labels = shuffle_tiles(x, self.grid, self.perms, self.rng.next())
        loss = F.cross_entropy(self.head(self.backbone(shuffled)), labels)
        with torch.no_grad():
            z = self.backbone(x)  # the collapse check looks at the unshuffled views
        return loss, z
