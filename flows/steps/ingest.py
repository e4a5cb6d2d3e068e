"""ingest: the source (Fashion-MNIST, an image folder or a manifest) -> manifest + decoded store."""

from __future__ import annotations

from ssl_components.config import Config
from ssl_components.data import ingest


def run(cfg: Config, keys: dict[str, str]) -> dict:
    return ingest(cfg.ingest, cfg.paths.data)
