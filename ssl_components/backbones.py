"""Encoders: a small CNN for 28x28 images on CPU and a CIFAR-style ResNet-18 for GPUs.

Every backbone maps normalised images (B, C, H, W) to features (B, out_dim); `normalize` turns the uint8
store into that input. Heads and methods live elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

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


# The pooled grids of small_cnn before `pretrain.pool` existed: encoders saved without a "pool" entry use these.
LEGACY_POOL = (1, 2)


class SmallCNN(nn.Module):
    """Five 3x3 conv blocks (28 -> 14 -> 7), then the last map average-pooled to each grid in `pool`
    (1: global average; 2: 2x2; 4: 4x4), concatenated.

    The finer grids keep coarse layout (top/bottom, sleeves, collars), which a linear probe and kNN can use:
    on a validation part of Fashion-MNIST's train split, (1, 2, 4) gave a SimCLR encoder +1.9 points of linear
    probe and +1.6 of kNN over (1, 2) (docs/benchmarks.md).
    """

    def __init__(self, in_channels: int = 1, width: int = 64, pool: tuple[int, ...] = (1, 2, 4)):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            _block(in_channels, w // 2),
            _block(w // 2, w, stride=2),
            _block(w, w),
            _block(w, 2 * w, stride=2),
            _block(2 * w, 2 * w),
        )
        self.pool = tuple(int(p) for p in pool)
        self.out_dim = 2 * w * sum(p * p for p in self.pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        return torch.cat([F.adaptive_avg_pool2d(h, p).flatten(1) for p in self.pool], dim=1)


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


def sincos_2d(dim: int, grid: tuple[int, int], base: int, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (gh * gw, dim), row-major: a quarter of the channels each for sin/cos of the
    row and of the column (as in MAE), zero-padded when dim % 4 != 0. Positions are in units of a `base` x `base`
    grid: another grid is the same function sampled at its patch centres, i.e. the base grid interpolated."""
    d = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(d, device=device, dtype=torch.float32) / max(d, 1))
    ys, xs = ((torch.arange(g, device=device, dtype=torch.float32) + 0.5) * base / g - 0.5 for g in grid)
    ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    out = torch.cat([f(c.reshape(-1, 1) * omega) for c in (ys, xs) for f in (torch.sin, torch.cos)], dim=1)
    return F.pad(out, (0, dim - 4 * d))


def transformer_blocks(dim: int, depth: int) -> nn.Sequential:
    """Pre-norm blocks (attention + GELU MLP x4, no dropout) with dim // 16 heads (head size 16), at most 8,
    lowered until it divides dim: 4 heads at width 64, 2 at 32, 1 below 32."""
    heads = max(1, min(dim // 16, 8))
    while dim % heads:
        heads -= 1
    layer = lambda: nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
    return nn.Sequential(*(layer() for _ in range(depth)))


class ViTTiny(nn.Module):
    """A small ViT (Dosovitskiy et al. 2021): patch_size x patch_size patches embedded by a strided conv, fixed
    2-D sin-cos positions, `depth` pre-norm blocks, final LayerNorm; `forward` mean-pools the tokens (B, width).

    Positions are defined on the image_size / patch_size grid (7x7 by default); other square or rectangular
    inputs whose sides are multiples of the patch (16x16 -> 4x4 patches) use the positions interpolated to their
    grid (`sincos_2d`), so the encoder rebuilt from (in_channels, width) alone works at any such size."""

    def __init__(self, in_channels: int = 1, width: int = 64, image_size: int = 28, patch_size: int = 4, depth: int = 4):
        super().__init__()
        self.in_channels, self.patch_size, self.base_grid, self.out_dim = in_channels, patch_size, image_size // patch_size, width
        self.patch_embed = nn.Conv2d(in_channels, width, patch_size, patch_size)
        self.blocks = transformer_blocks(width, depth)
        self.norm = nn.LayerNorm(width)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> patch tokens with positions (B, N, width), patches in row-major order."""
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"ViTTiny needs image sides divisible by the patch size {self.patch_size}, got {h}x{w}")
        grid = (h // self.patch_size, w // self.patch_size)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        return tokens + sincos_2d(self.out_dim, grid, self.base_grid, x.device).to(tokens.dtype)

    def forward_tokens(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded tokens (B, n, width) of the patches with indices `keep` (B, n) (all patches if None)."""
        tokens = self.embed(x)
        if keep is not None:
            tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return self.norm(self.blocks(tokens))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_tokens(x).mean(dim=1)


def build_backbone(name: str, in_channels: int = 1, width: int = 64, pool: Sequence[int] = (1, 2, 4)) -> nn.Module:
    """`pool`: small_cnn's pooled grids (other backbones have none)."""
    if name == "vit_tiny":
        return ViTTiny(in_channels, width)
    if name == "small_cnn":
        return SmallCNN(in_channels, width, tuple(pool))
    if name == "resnet18":
        return ResNet18Small(in_channels)
    raise ValueError(f"unknown backbone {name!r}; use small_cnn, resnet18 or vit_tiny")


def save_encoder(backbone: nn.Module, meta: dict, path) -> None:
    """Weights plus what is needed to rebuild the module; loads with `torch.load(weights_only=True)`."""
    from ssl_components.io import save_torch

    save_torch(path, {"state_dict": backbone.state_dict(), "meta": dict(meta)})


def load_encoder(path, map_location="cpu") -> nn.Module:
    """Rebuild an encoder saved by `save_encoder` without unpickling code (weights_only)."""
    blob = torch.load(path, map_location=map_location, weights_only=True)
    meta = blob["meta"]
    encoder = build_backbone(meta["backbone"], meta["in_channels"], meta.get("width", 64), meta.get("pool", LEGACY_POOL))
    encoder.load_state_dict(blob["state_dict"])
    encoder.meta = meta
    return encoder.eval()


ARCHITECTURE_KEYS = ("backbone", "width", "pool", "in_channels", "image_size")


def encoder_digest(encoder: nn.Module, meta: dict) -> str:
    """sha256 of an encoder's architecture and weights (every tensor's name, dtype, shape and bytes).

    Two encoders with the same digest compute the same function, whatever run or code produced them: the
    registry uses it to register an encoder only once.
    """
    import hashlib
    import json

    h = hashlib.sha256(json.dumps({k: meta.get(k) for k in ARCHITECTURE_KEYS}, sort_keys=True).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
