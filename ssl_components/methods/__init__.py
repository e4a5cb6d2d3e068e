"""SSL methods, looked up by name (`pretrain.method` in params.yaml). One module per method."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from ssl_components.backbones import build_backbone
from ssl_components.config import PretrainConfig
from ssl_components.errors import ConfigError
from ssl_components.methods.autoencoder import Autoencoder, DenoisingAutoencoder
from ssl_components.methods.barlow_twins import BarlowTwins
from ssl_components.methods.base import Method
from ssl_components.methods.byol import BYOL
from ssl_components.methods.dino import DINO
from ssl_components.methods.inpainting import Inpainting
from ssl_components.methods.jigsaw import Jigsaw
from ssl_components.methods.mae import MAE
from ssl_components.methods.moco import MoCo
from ssl_components.methods.rotation import RotationPrediction
from ssl_components.methods.simclr import SimCLR
from ssl_components.methods.simsiam import SimSiam
from ssl_components.methods.swav import SwAV
from ssl_components.methods.vae import VAE
from ssl_components.methods.vicreg import VICReg

# name -> method class; every class is built as cls(backbone, cfg)
METHODS: dict[str, Callable[[nn.Module, PretrainConfig], Method]] = {
    # contrastive
    "simclr": SimCLR,
    "moco": MoCo,
    # non-contrastive
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    # clustering / distillation (multi-crop)
    "swav": SwAV,
    "dino": DINO,
    # masked modelling
    "mae": MAE,
    # classic pretext tasks
    "autoencoder": Autoencoder,
    "denoising_autoencoder": DenoisingAutoencoder,
    "rotation": RotationPrediction,
    "jigsaw": Jigsaw,
    # classic pretext tasks: generative
    "vae": VAE,
    "inpainting": Inpainting,
}


def build_method(cfg: PretrainConfig, in_channels: int) -> Method:
    if cfg.method not in METHODS:
        raise ConfigError(f"pretrain.method {cfg.method!r} is not available; use one of {sorted(METHODS)}")
    backbone = build_backbone(cfg.backbone, in_channels, cfg.width, cfg.pool)
    return METHODS[cfg.method](backbone, cfg)


__all__ = ["METHODS", "Method", "build_method"]
