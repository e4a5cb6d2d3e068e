"""Encoders: a small CNN for 28x28 images on CPU and a CIFAR-style ResNet-18 for GPUs.

Every backbone maps normalised images (B, C, H, W) to features (B, out_dim); `normalize` turns the uint8
store into that input. Heads and methods live elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import resnet18


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [-1, 1]. Float input is taken as already in [0, 1]."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images
    return x * 2.0 - 1.0


def _block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    """Five 3x3 conv blocks (28 -> 14 -> 7), then global average and 2x2 average pooling concatenated.

    The 2x2 pooled map keeps coarse layout (top/bottom, left/right), which a linear probe can use.
    """

    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(in_channels, w // 2),
            _block(w // 2, w, stride=2),
            _block(w, w),
            _block(w, 2 * w, stride=2),
            _block(2 * w, 2 * w),
        )
        self.out_dim = 2 * w * 5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return torch.cat([F.adaptive_avg_pool2d(h, 1).flatten(1), F.adaptive_avg_pool2d(h, 2).flatten(1)], dim=1)


class ResNet18Small(nn.Module):
    """ResNet-18 with a 3x3 stride-1 stem and no max-pool (the usual CIFAR variant); 512-d features."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        net = resnet18(weights=None)
        net.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        net.maxpool = nn.Identity()
        net.fc = nn.Identity()
        self.net = net
        self.out_dim = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_backbone(name: str, in_channels: int = 1, width: int = 64) -> nn.Module:
    if name == "small_cnn":
        return SmallCNN(in_channels, width)
    if name == "resnet18":
        return ResNet18Small(in_channels)
    raise ValueError(f"unknown backbone {name!r}; use small_cnn or resnet18")


def save_encoder(backbone: nn.Module, meta: dict, path) -> None:
    """Weights plus what is needed to rebuild the module; loads with `torch.load(weights_only=True)`."""
    from ssl_components.io import atomic_path

    with atomic_path(path, suffix=".pt") as tmp:
        torch.save({"state_dict": backbone.state_dict(), "meta": dict(meta)}, tmp)


def load_encoder(path, map_location="cpu") -> nn.Module:
    """Rebuild an encoder saved by `save_encoder` without unpickling code (weights_only)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    meta = blob["meta"]
    encoder = build_backbone(meta["backbone"], meta["in_channels"], meta.get("width", 64))
    encoder.load_state_dict(blob["state_dict"])
    encoder.meta = meta
    return encoder.eval()
