"""pretrain: the SSL method on the validated train images; resumes only a checkpoint of this same key.

The train labels feed only the kNN monitor (and early stopping on it), never the loss."""

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
    # labels go to the kNN monitor only (a labelled part of the train split), never to the training loss
    return pretrain(
        cfg.pretrain,
        views,
        len(train),
        (c, h, w),
        cfg.paths.models,
        cfg.seed,
        run_key=keys["pretrain"],
        monitor_data=(train.images, train.labels),
    )
