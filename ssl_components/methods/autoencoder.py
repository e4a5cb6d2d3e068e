"""Autoencoders: reconstruct the view from the backbone's features (denoising: Vincent et al., ICML 2008)."""

from __future__ import annotations

import math
from typing import SupportsInt, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_components.config import PretrainConfig
from ssl_components.methods.base import Method
from ssl_components.pretext import StepRNG, add_noise

_BASE = 4  # side of the decoder's first feature map at 16x16 input; other sizes resize it to ceil(H/4)


def _in_channels(backbone: nn.Module) -> int:
    if hasattr(backbone, "in_channels"):
        return int(cast(SupportsInt, backbone.in_channels))
    conv = next((m for m in backbone.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError("autoencoder: cannot tell the backbone's input channels (no in_channels, no Conv2d)")
    return conv.in_channels


class Decoder(nn.Module):
    """Features (B, D) -> images (B, C, H, W) in [-1, 1]: Linear -> (ch, 4, 4), resized to (ceil(H/4), ceil(W/4))
    when the input is not 16x16, two stride-2 transposed convs (x4), resized to (H, W) if needed, tanh.

    The method does not know the image size when it is built, so the linear layer has a fixed output size."""

    def __init__(self, in_dim: int, out_channels: int, ch: int):
        super().__init__()
        self.ch = ch
        self.fc = nn.Linear(in_dim, ch * _BASE * _BASE)
        self.up = nn.Sequential(
            nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ch // 2),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(ch // 2, out_channels, 4, 2, 1),
        )

    def forward(self, h: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = F.relu(self.fc(h)).view(len(h), self.ch, _BASE, _BASE)
        s = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
        if s != (_BASE, _BASE):
            y = F.interpolate(y, size=s, mode="bilinear", align_corners=False)
        y = self.up(y)
        if tuple(y.shape[-2:]) != tuple(size):
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        return torch.tanh(y)


class Autoencoder(Method):
    """Backbone as the encoder, a small `Decoder`, MSE between the reconstruction and the clean view."""

    name = "autoencoder"
    views = "single"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.decoder = Decoder(backbone.out_dim, _in_channels(backbone), 2 * cfg.width)

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def reconstruct(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction of x's size, backbone features of x)."""
        h = self.backbone(x)
        return self.decoder(h, tuple(x.shape[-2:])), h

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        recon, h = self.reconstruct(self.corrupt(x))
        return F.mse_loss(recon, x), h.detach()


class DenoisingAutoencoder(Autoencoder):
    """Gaussian noise of std `denoise_std` on the encoder's input; the target is still the clean view."""

    name = "denoising_autoencoder"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone, cfg)
        self.std = cfg.denoise_std
        self.rng = StepRNG()

    def corrupt(self, x: torch.Tensor) -> torch.Tensor:
        return add_noise(x, self.std, self.rng.next())
