"""Variational autoencoder (Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014).

The backbone's features go through a linear head to the mean and log-variance of a diagonal Gaussian latent
of `vae_latent_dim`; a sample z = mu + sigma * eps (eps from the method's seeded per-step generator) is decoded
to the image by the autoencoder's `Decoder`. The loss is the squared error summed over each image's pixels plus
`vae_beta` times KL(N(mu, sigma²) || N(0, I)), both averaged over the batch: up to an additive constant, 2σ² times
the negative ELBO of a decoder with fixed pixel noise N(0, σ²) where vae_beta = 2σ² (the default 0.5: σ = 0.5 on
the [-1, 1] pixel scale). Downstream, the encoder is the backbone (its features, not mu), as for the plain
autoencoder.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ssl_components.config import PretrainConfig
from ssl_components.methods.autoencoder import Decoder, _in_channels
from ssl_components.methods.base import Method
from ssl_components.pretext import StepRNG


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps: a sample of N(mu, exp(logvar)) that is differentiable in mu and logvar."""
    return mu + torch.exp(0.5 * logvar) * eps


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) of (B, D) diagonal Gaussians: -0.5 Σ_d (1 + logvar - mu² - exp(logvar)),
    averaged over the batch."""
    mu, logvar = mu.float(), logvar.float()
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=-1)).mean()


def reconstruction_sse(recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over each image's channels and pixels, averaged over the batch."""
    return (recon.float() - target.float()).pow(2).flatten(1).sum(dim=1).mean()


def vae_loss(
    recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, reconstruction term, KL term) with loss = reconstruction_sse + beta * kl_standard_normal."""
    rec, kl = reconstruction_sse(recon, target), kl_standard_normal(mu, logvar)
    return rec + beta * kl, rec, kl


class VAE(Method):
    """Backbone -> Linear(out_dim, 2 * vae_latent_dim) -> (mu, logvar) -> z -> `Decoder` -> image."""

    name = "vae"
    views = "single"

    def __init__(self, backbone, cfg: PretrainConfig):
        super().__init__(backbone)
        self.latent_dim = cfg.vae_latent_dim
        self.beta = cfg.vae_beta
        self.head = nn.Linear(backbone.out_dim, 2 * cfg.vae_latent_dim)
        self.decoder = Decoder(cfg.vae_latent_dim, _in_channels(backbone), 2 * cfg.width)
        self.rng = StepRNG()  # eps: a resumed run draws what an uninterrupted one would

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mu, logvar, backbone features) of x."""
        h = self.backbone(x)
        mu, logvar = self.head(h).chunk(2, dim=-1)
        return mu, logvar, h

    def training_step(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = views[0]
        mu, logvar, h = self.encode(x)
        eps = torch.randn(mu.shape, generator=self.rng.next()).to(device=mu.device, dtype=mu.dtype)
        recon = self.decoder(reparameterise(mu, logvar, eps), tuple(x.shape[-2:]))
        loss, _, _ = vae_loss(recon, x, mu, logvar, self.beta)
        return loss, h.detach()
