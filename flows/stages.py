"""The pipeline's stages, each written once.

`STAGES` is the one list of stages, in order, with the params sections, code, inputs and outputs of each.
The Prefect flow (flows/pipeline.py) runs it as tasks; `dvc.yaml` is generated from it (`sslpipe dvc-yaml`)
and runs each stage through the CLI (`sslpipe stage NAME`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssl_components.config import Config
from ssl_components.io import fingerprint, read_json, write_json

log = logging.getLogger(__name__)


def _views_dir(cfg: Config) -> Path:
    return cfg.paths.data / "cache" / "views"


def _plots_dir(cfg: Config) -> Path:
    return cfg.paths.reports / "plots"


def run_ingest(cfg: Config) -> dict:
    from ssl_components.data import ingest

    return ingest(cfg.ingest, cfg.paths.data, cfg.seed)


def run_validate(cfg: Config) -> dict:
    from ssl_components.validation import validate

    return validate(cfg.validate_, cfg.paths.data, cfg.paths.reports)


def run_cache_views(cfg: Config) -> dict:
    from ssl_components.training import resolve_device
    from ssl_components.views import cache_views

    return cache_views(cfg.cache_views, cfg.paths.data, _views_dir(cfg), cfg.seed, str(resolve_device("auto")))


def run_pretrain(cfg: Config) -> dict:
    from ssl_components.data import load_dataset
    from ssl_components.data.dataset import data_version
    from ssl_components.training import pretrain, resolve_device
    from ssl_components.views import ViewProvider, cache_key

    train = load_dataset(cfg.paths.data, "train")
    version = data_version(cfg.paths.data)
    device = str(resolve_device(cfg.pretrain.device))
    views = ViewProvider(cfg.cache_views, train.images, _views_dir(cfg), cfg.seed, version, device=device)
    run_key = fingerprint(cfg.pretrain.model_dump(mode="json"), cache_key(version, cfg.cache_views, cfg.seed), cfg.seed)
    return pretrain(cfg.pretrain, views, len(train), tuple(train.images.shape[1:]), cfg.paths.models, cfg.seed, run_key)


def run_evaluate(cfg: Config) -> dict:
    from ssl_components import plots
    from ssl_components.data import load_dataset
    from ssl_components.evaluation import evaluate_saved_encoder
    from ssl_components.training import ENCODER, HISTORY, resolve_device

    train, test = load_dataset(cfg.paths.data, "train"), load_dataset(cfg.paths.data, "test")
    result = evaluate_saved_encoder(cfg.paths.models / ENCODER, train, test, cfg.evaluate, cfg.seed, str(resolve_device("auto")))
    metrics = result["metrics"]
    write_json(cfg.paths.reports / "metrics.json", metrics)

    pdir = _plots_dir(cfg)
    classes = train.classes or [str(i) for i in range(int(train.labels.max()) + 1)]
    test_labeled = test.labels[test.labels >= 0].numpy()
    plots.loss_curve(read_json(cfg.paths.models / HISTORY), pdir / "loss_curve.png")
    plots.confusion_matrix(test_labeled, result["predictions"], classes, pdir / "confusion_matrix.png")
    plots.embedding_map(result["test_features"], result["test_labels_subset"], classes, pdir / "embedding_map.png", cfg.seed)
    plots.accuracy_bars(metrics, pdir / "accuracy.png")
    return metrics


def run_register(cfg: Config) -> dict:
    from flows.registry import register_run

    return register_run(cfg)


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Config], dict]
    sections: tuple[str, ...]  # params.yaml sections it reads (besides seed, profile, paths)
    code: tuple[str, ...]  # source it depends on
    deps: tuple[str, ...] = ()  # inputs: "{data}/manifest.parquet", or "{source}" for the user's images
    outs: tuple[str, ...] = ()
    uncached_outs: tuple[str, ...] = ()  # large or side-effect outputs DVC should not copy to its cache
    persist_outs: tuple[str, ...] = ()  # kept between runs (checkpoints for resume)
    metrics: tuple[str, ...] = ()
    plots: tuple[str, ...] = ()
    retries: int = 0  # Prefect retries, for failures that can be transient
    prefect_cache: bool = True  # skip the stage in the flow when its inputs are unchanged

    def paths(self, cfg: Config, kind: str) -> list[Path]:
        """Paths of one kind; "{source}" is the user's image folder or manifest (none for Fashion-MNIST)."""
        roots = {"data": cfg.paths.data, "models": cfg.paths.models, "reports": cfg.paths.reports}
        out = []
        for p in getattr(self, kind):
            if p == "{source}":
                out += [Path(cfg.ingest.path)] if cfg.ingest.path is not None else []
            else:
                out.append(Path(p.format(**roots)))
        return out

    def outputs(self, cfg: Config) -> list[Path]:
        return [p for kind in ("outs", "uncached_outs", "persist_outs", "metrics", "plots") for p in self.paths(cfg, kind)]


STAGES: list[Stage] = [
    Stage(
        "ingest",
        run_ingest,
        ("ingest",),
        ("ssl_components/data",),
        deps=("{source}",),
        outs=("{data}/manifest.parquet", "{data}/store.npy", "{data}/classes.json"),
        retries=2,
    ),
    Stage(
        "validate",
        run_validate,
        ("validate",),
        ("ssl_components/validation.py",),
        deps=("{data}/manifest.parquet", "{data}/store.npy"),
        outs=("{data}/quarantine.csv",),
        uncached_outs=("{reports}/validation.md",),
        metrics=("{reports}/validation.json",),
    ),
    Stage(
        "cache_views",
        run_cache_views,
        ("cache_views",),
        ("ssl_components/augment.py", "ssl_components/views.py"),
        deps=("{data}/manifest.parquet", "{data}/store.npy", "{data}/quarantine.csv"),
        uncached_outs=("{data}/cache/views",),
    ),
    Stage(
        "pretrain",
        run_pretrain,
        ("pretrain", "cache_views"),
        (
            "ssl_components/training.py",
            "ssl_components/methods",
            "ssl_components/losses",
            "ssl_components/backbones.py",
            "ssl_components/heads.py",
        ),
        deps=("{data}/manifest.parquet", "{data}/store.npy", "{data}/quarantine.csv", "{data}/cache/views"),
        outs=("{models}/encoder.pt", "{models}/history.json"),
        persist_outs=("{models}/checkpoints",),
    ),
    Stage(
        "evaluate",
        run_evaluate,
        ("evaluate",),
        ("ssl_components/evaluation.py", "ssl_components/plots.py"),
        deps=("{data}/manifest.parquet", "{data}/store.npy", "{data}/quarantine.csv", "{models}/encoder.pt", "{models}/history.json"),
        metrics=("{reports}/metrics.json",),
        plots=("{reports}/plots",),
    ),
    Stage(
        "register",
        run_register,
        ("register",),
        ("flows/registry.py",),
        deps=("{models}/encoder.pt", "{models}/history.json", "{reports}/metrics.json", "{reports}/plots"),
        uncached_outs=("{reports}/registry.json",),
        retries=2,
        prefect_cache=False,
    ),
]
STAGE_NAMES = [s.name for s in STAGES]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    from ssl_components.errors import ConfigError

    raise ConfigError(f"unknown stage {name!r}; use one of {', '.join(STAGE_NAMES)}")


def run_stage(name: str, cfg: Config) -> dict:
    stage = get_stage(name)
    log.info("stage %s: running", name)
    result = stage.run(cfg)
    log.info("stage %s: done", name)
    return result
