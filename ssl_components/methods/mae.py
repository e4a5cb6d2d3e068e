"""MAE: masked autoencoders (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022).

The ViT encoder sees only a random (1 - mask_ratio) of the patches; a light transformer decoder gets the encoded
visible tokens plus a shared mask token at every hidden position and predicts the pixels of each patch. The loss
is the MSE on the masked patches only, against per-patch normalised pixels (the paper's norm_pix_loss).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ssl_components.backbones import ViTTiny, sincos_2d, transformer_blocks
from ssl_components.config import PretrainConfig
from ssl_components.errors import ConfigError
from ssl_components.methods.base import Method
from ssl_components.pretext import StepRNG


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C): non-overlapping p x p patches in row-major order, each flattened (p, p, C)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(t: torch.Tensor, p: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `patchify` for (H, W) images."""
    b, _, d = t.shape
    c = d // (p * p)
    t = t.reshape(b, h // p, w // p, p, p, c)
    return t.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def num_kept(n: int, mask_ratio: float) -> int:
    """round((1 - mask_ratio) * n) patches stay visible, at least 1 and at most n - 1 (something to predict)."""
    return min(n - 1, max(1, round((1 - mask_ratio) * n)))


def random_masking(
    batch: int, n: int, mask_ratio: float, generator: torch.Generator | None = None, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample random masking by sorting uniform noise (batched). Returns (keep (B, n_keep): indices of the
    visible patches, restore (B, N)): shuffled order -> original order, so patch j is masked iff restore[:, j] >= n_keep."""
    shuffle = torch.rand(batch, n, generator=generator).argsort(dim=1).to(device)
    return shuffle[:, : num_kept(n, mask_ratio)], shuffle.argsort(dim=1)


def masked_mse(pred: torch.Tensor, patches: torch.Tensor, masked: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean over masked patches (`masked` (B, N) bool) of the per-patch MSE; with norm_pix the target is each patch
    minus its mean over its (unbiased) std + 1e-6, as in the paper's code."""
    if norm_pix:
        patches = (patches - patches.mean(-1, keepdim=True)) / (patches.var(-1, keepdim=True) + 1e-6).sqrt()
    per_patch = (pred.float() - patches.float()).pow(2).mean(-1)
    return (per_patch * masked).sum() / masked.sum()


class MAE(Method):
    """Encoder: the vit_tiny backbone on visible patches. Decoder: width // 2 (at least 16) wide, 2 blocks."""

    name = "mae"
    views = "single"
    backbone: ViTTiny  # __init__ rejects every other backbone

    def __init__(self, backbone, cfg: PretrainConfig):
        if cfg.backbone != "vit_tiny":
            raise ConfigError(f"MAE needs pretrain.backbone: vit_tiny (got {cfg.backbone!r}); set pretrain.backbone: vit_tiny")
        if cfg.patch_size != backbone.patch_size:
            raise ConfigError(
                f"pretrain.patch_size is {cfg.patch_size} but vit_tiny uses {backbone.patch_size}x"
                f"{backbone.patch_size} patches; set pretrain.patch_size: {backbone.patch_size}"
            )
        super().__init__(backbone)
        self.mask_ratio = cfg.mask_ratio
        dim = max(16, cfg.width // 2)
        self.decoder_embed = nn.Linear(backbone.out_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.decoder_blocks = transformer_blocks(dim, 2)
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, backbone.patch_size**2 * backbone.in_channels)
        self.rng = StepRNG()  # the masks: a resumed run draws what an uninterrupted one would

    def decode(self, latent: torch.Tensor, restore: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Encoded visible tokens (B, n_keep, D) -> predicted patches (B, N, p*p*C) in the original order."""
        h = self.decoder_embed(latent)
        b, n = restore.shape
        h = torch.cat([h, self.mask_token.to(h.dtype).expand(b, n - h.shape[1], -1)], dim=1)
        h = h.gather(1, restore.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        h = h + sincos_2d(h.shape[-1], grid, self.backbone.base_grid, h.device).to(h.dtype)
        return self.decoder_pred(self.decoder_norm(self.decoder_blocks(h)))

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        p = self.backbone.patch_size
        patches = patchify(x, p)
        keep, restore = random_masking(len(x), patches.shape[1], self.mask_ratio, self.rng.next(), x.device)
        latent = self.backbone.forward_tokens(x, keep)
        pred = self.decode(latent, restore, (x.shape[-2] // p, x.shape[-1] // p))
        loss = masked_mse(pred, patches, restore >= keep.shape[1])
        return loss, latent.mean(dim=1).detach()  # pooled visible tokens: what the collapse check watches
