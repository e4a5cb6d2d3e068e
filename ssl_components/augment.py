"""Batched SSL augmentation on uint8 tensors, with random parameters drawn per sample.

torchvision's batched v2 transforms draw one set of parameters for the whole batch; contrastive methods need
every image (and every view) to get its own. Here each step draws a (B,)-shaped tensor of parameters and
applies them with batched tensor ops, so the same code runs fast on CPU and on a GPU.

Order of operations (fixed): random resized crop + horizontal flip (one affine warp per sample), brightness,
then contrast (clamped to [0, 1] after each, like torchvision's ColorJitter), Gaussian blur, additive noise.
All random numbers come from the given generator, on the generator's device, then move to the images'
device: a CPU generator gives the same parameters whether the images are on CPU or GPU. Parameters are drawn
(`draw_params`) apart from making the pixels (`apply_params`), so a view can be made for any rows later; noise
is drawn from a seed per image for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ssl_components.config import CacheViewsConfig

_CROP_TRIES = 10  # like torchvision's RandomResizedCrop: first valid of 10 draws, else a central fallback
_GRAY = (0.299, 0.587, 0.114)


def _rand(gen: torch.Generator, shape: tuple[int, ...], device: torch.device, lo: float = 0.0, hi: float = 1.0) -> torch.Tensor:
    return (torch.rand(shape, generator=gen, device=gen.device) * (hi - lo) + lo).to(device)


def _crop_flip_theta(b: int, h: int, w: int, cfg: CacheViewsConfig, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-sample (B, 2, 3) matrices for affine_grid: output coords -> input coords, both in [-1, 1].

    A crop covering a fraction (fw, fh) of the width/height, centred at (cx, cy), is x_in = fw * x_out + cx;
    a flip negates fw. Scale is uniform in cfg.crop_scale, aspect ratio log-uniform in cfg.crop_ratio; a draw
    that does not fit in the image is rejected (first of _CROP_TRIES that fits wins). If none fits, the whole
    image is used, trimmed to the nearest allowed aspect ratio (torchvision's fallback). Sizes are continuous,
    not rounded to whole pixels.
    """
    area = _rand(gen, (b, _CROP_TRIES), device, *cfg.crop_scale)
    log_r = _rand(gen, (b, _CROP_TRIES), device, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]))
    ratio = torch.exp(log_r)  # crop width / crop height, in pixels
    fw = torch.sqrt(area * ratio * h / w)
    fh = torch.sqrt(area / ratio * w / h)
    ok = (fw <= 1) & (fh <= 1)
    first = ok.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of the first draw that fits (0 if none)
    fw, fh = fw.gather(1, first).squeeze(1), fh.gather(1, first).squeeze(1)
    in_ratio = w / h
    lo_r, hi_r = cfg.crop_ratio
    fb_w, fb_h = (1.0, in_ratio / lo_r) if in_ratio < lo_r else (hi_r / in_ratio, 1.0) if in_ratio > hi_r else (1.0, 1.0)
    any_ok = ok.any(dim=1)
    fw = torch.where(any_ok, fw, torch.full_like(fw, fb_w))
    fh = torch.where(any_ok, fh, torch.full_like(fh, fb_h))
    cx = (_rand(gen, (b,), device) * 2 - 1) * (1 - fw)  # keeps the crop inside the image
    cy = (_rand(gen, (b,), device) * 2 - 1) * (1 - fh)
    sign = torch.where(_rand(gen, (b,), device) < cfg.flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = fw * sign, cx
    theta[:, 1, 1], theta[:, 1, 2] = fh, cy
    return theta


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, max_sigma: float) -> torch.Tensor:
    """Blur each image of x (n, C, H, W) with its own sigma (n,): separable kernels, one grouped conv per axis."""
    n, c, h, w = x.shape
    radius = max(1, min(math.ceil(3 * max_sigma), h - 1, w - 1))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = (k / k.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (n*C, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)  # along W
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)  # along H
    return y.reshape(n, c, h, w)


@dataclass(frozen=True)
class ViewParams:
    """The random parameters of one view of B images (every field has B rows; None where the setting is off).

    Drawn apart from the pixels, so the views of any rows can be made later from their rows of the parameters:
    pretraining draws an epoch's parameters for every image, then makes each batch's views as it goes."""

    theta: torch.Tensor  # (B, 2, 3) crop and flip, for affine_grid
    brightness: torch.Tensor | None  # (B, 1, 1, 1) factors
    contrast: torch.Tensor | None  # (B, 1, 1, 1) factors
    blur: torch.Tensor | None  # (B,) bool: blurred or not
    sigma: torch.Tensor | None  # (B,) blur sigmas
    noise_seed: torch.Tensor | None  # (B,) int64: seeds of each image's own noise

    def take(self, index: torch.Tensor | slice) -> ViewParams:
        theta, *rest = (None if f is None else f[index] for f in _fields_of(self))
        assert theta is not None
        return ViewParams(theta, *rest)

    @staticmethod
    def cat(parts: list[ViewParams]) -> ViewParams:
        theta, *rest = (None if f[0] is None else torch.cat(f) for f in zip(*(_fields_of(p) for p in parts)))
        assert theta is not None
        return ViewParams(theta, *rest)


def _fields_of(p: ViewParams) -> tuple[torch.Tensor | None, ...]:
    return tuple(getattr(p, f.name) for f in fields(p))


def draw_params(b: int, h: int, w: int, cfg: CacheViewsConfig, generator: torch.Generator) -> ViewParams:
    """Random parameters of one view of `b` images of h x w, drawn from `generator` (on its device, kept there)."""
    dev = generator.device
    theta = _crop_flip_theta(b, h, w, cfg, generator, dev)
    brightness = _rand(generator, (b, 1, 1, 1), dev, 1 - cfg.brightness, 1 + cfg.brightness) if cfg.brightness > 0 else None
    contrast = _rand(generator, (b, 1, 1, 1), dev, 1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast > 0 else None
    blur = sigma = None
    if cfg.blur_p > 0:
        blur = _rand(generator, (b,), dev) < cfg.blur_p
        sigma = _rand(generator, (b,), dev, *cfg.blur_sigma)
    noise_seed = None
    if cfg.noise_std > 0:
        noise_seed = torch.randint(0, 2**62, (b,), generator=generator, device=dev)
    return ViewParams(theta, brightness, contrast, blur, sigma, noise_seed)


def apply_params(images: torch.Tensor, params: ViewParams, cfg: CacheViewsConfig, out_size: int | None = None) -> torch.Tensor:
    """One view of every image made with its row of `params`: uint8 (B, C, H, W) -> uint8 (B, C, S, S) on the same
    device, where S is `out_size` (default: the input size; multi-crop's local views are smaller)."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"augment expects uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    b, c, h, w = images.shape
    dev = images.device
    if b == 0:
        return images.clone()
    if len(params.theta) != b:
        raise ValueError(f"{len(params.theta)} rows of view parameters for {b} images")
    x = images.float() / 255.0
    if out_size is not None:
        h = w = int(out_size)
    grid = F.affine_grid(params.theta.to(dev), [b, c, h, w], align_corners=False)
    # "border" only matters in the half-pixel rim around the outermost pixel centres: no dark edges.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if params.brightness is not None:
        x = (x * params.brightness.to(dev)).clamp_(0, 1)
    if params.contrast is not None:
        factor = params.contrast.to(dev)
        gray = x if c != 3 else (x * torch.tensor(_GRAY, device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        x = (factor * x + (1 - factor) * mean).clamp_(0, 1)
    if params.blur is not None and params.sigma is not None:
        idx = params.blur.nonzero().squeeze(1).to(dev)
        if idx.numel():
            x[idx] = _gaussian_blur(x[idx], params.sigma.to(dev)[idx], cfg.blur_sigma[1])
    if params.noise_seed is not None:  # each image's noise from its own seed: the same whichever batch it is in
        noise = torch.stack([torch.randn((c, h, w), generator=torch.Generator().manual_seed(int(s))) for s in params.noise_seed.tolist()])
        x = x + noise.to(dev) * cfg.noise_std
    return (x.clamp(0, 1) * 255.0).round_().to(torch.uint8)


def augment_batch(images: torch.Tensor, cfg: CacheViewsConfig, generator: torch.Generator, out_size: int | None = None) -> torch.Tensor:
    """One random view of every image: uint8 (B, C, H, W) -> uint8 (B, C, S, S) on the same device (see
    `apply_params`). Every sample gets its own crop, flip, brightness, contrast, blur and noise. Deterministic for
    a given generator state, cfg, batch and device."""
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"augment_batch expects uint8 (B, C, H, W) images, got {images.dtype} {tuple(images.shape)}")
    b, _, h, w = images.shape
    return apply_params(images, draw_params(b, h, w, cfg, generator), cfg, out_size)


def two_views(images: torch.Tensor, cfg: CacheViewsConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent random views of every image (drawn one after the other from `generator`)."""
    return augment_batch(images, cfg, generator), augment_batch(images, cfg, generator)
