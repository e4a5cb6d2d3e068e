"""SSL methods, looked up by name (`pretrain.method` in params.yaml)."""

from __future__ import annotations

from ssl_components.backbones import build_backbone
from ssl_components.config import PretrainConfig
from ssl_components.errors import ConfigError
from ssl_components.methods.base import Method
from ssl_components.methods.simclr import SimCLR

METHODS: dict[str, type[Method]] = {"simclr": SimCLR}


def build_method(cfg: PretrainConfig, in_channels: int) -> Method:
    if cfg.method not in METHODS:
        raise ConfigError(f"pretrain.method {cfg.method!r} is not available; use one of {sorted(METHODS)}")
    backbone = build_backbone(cfg.backbone, in_channels, cfg.width)
    return METHODS[cfg.method](backbone, cfg)


__all__ = ["METHODS", "Method", "build_method"]
