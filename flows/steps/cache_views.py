"""cache_views: augmented view pairs of the validated train images, keyed by this stage's record key."""

from __future__ import annotations

from ssl_components import layout
from ssl_components.config import Config
from ssl_components.device import resolve_device
from ssl_components.views import cache_views


def run(cfg: Config, keys: dict[str, str]) -> dict:
    device = str(resolve_device("auto"))
    return cache_views(cfg.cache_views, cfg.paths.data, cfg.paths.data / layout.VIEWS, cfg.seed, keys["cache_views"], device)
