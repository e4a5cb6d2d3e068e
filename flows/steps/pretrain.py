"""pretrain: the SSL method on the validated train images; resumes only a checkpoint of this same key."""

from __future__ import annotations

from ssl_components import layout
from ssl_components.config import Config
from ssl_components.data import load_dataset
from ssl_components.device import resolve_device
from ssl_components.training import pretrain
from ssl_components.views import ViewProvider


def run(cfg: Config, keys: dict[str, str]) -> dict:
    train = load_dataset(cfg.paths.data, "train")
    device = str(resolve_device(cfg.pretrain.device))
    views = ViewProvider(cfg.cache_views, train.images, cfg.paths.data / layout.VIEWS, cfg.seed, keys["cache_views"], device=device)
    c, h, w = train.images.shape[1:]
    return pretrain(cfg.pretrain, views, len(train), (c, h, w), cfg.paths.models, cfg.seed, run_key=keys["pretrain"])
