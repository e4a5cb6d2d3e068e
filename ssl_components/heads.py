"""Projection and prediction heads shared by the SSL methods."""

from __future__ import annotations

import torch.nn as nn


class ProjectionHead(nn.Sequential):
    """Linear-BN-ReLU blocks followed by a final linear layer (SimCLR v2 style)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_bn: bool = False):
        blocks: list[nn.Module] = []
        dim = in_dim
        for _ in range(layers - 1):
            blocks += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
            dim = hidden_dim
        blocks.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            blocks.append(nn.BatchNorm1d(out_dim, affine=False))
        super().__init__(*blocks)
