"""Which torch device a stage runs on."""

from __future__ import annotations

import torch

from ssl_components.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` is the GPU when one is visible, else the CPU; asking for `cuda` without a GPU is a clear error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("pretrain.device is 'cuda' but no GPU is visible; set pretrain.device: auto or cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)
