"""MLflow tracking and the model registry: one run per pipeline run, and the challenger -> champion gate.

Every registered encoder gets alias `challenger`; it takes `champion` only if its `register.promote_metric`
beats the current champion's (or there is none). Versions are logged in the `pt2` format (torch.export),
so loading `models:/ssl-encoder@champion` runs no pickled code.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

from ssl_components.config import Config
from ssl_components.io import read_json, write_json

log = logging.getLogger(__name__)
CHALLENGER, CHAMPION = "challenger", "champion"


def _mlflow(cfg: Config):
    import mlflow

    mlflow.set_tracking_uri(cfg.register_.tracking_uri)
    return mlflow


def _client(cfg: Config):
    return _mlflow(cfg).MlflowClient()


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _experiment_id(cfg: Config) -> str:
    mlflow = _mlflow(cfg)
    reg = cfg.register_
    if cfg.register_.tracking_uri.startswith("sqlite:///"):
        Path(reg.tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    exp = mlflow.get_experiment_by_name(reg.experiment)
    if exp is not None:
        return exp.experiment_id
    return mlflow.create_experiment(reg.experiment, artifact_location=Path(reg.artifact_root).resolve().as_uri())


def _champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_run(cfg: Config) -> dict:
    """Log the run (params, per-epoch loss, metrics, plots, data version, git commit), register the encoder
    as `challenger`, and promote it to `champion` if it beats the current one. Writes reports/registry.json."""
    from ssl_components.backbones import load_encoder
    from ssl_components.data.dataset import data_version
    from ssl_components.training import ENCODER, HISTORY

    mlflow = _mlflow(cfg)
    reg = cfg.register_
    metrics = read_json(cfg.paths.reports / "metrics.json")
    history = read_json(cfg.paths.models / HISTORY)
    encoder = load_encoder(cfg.paths.models / ENCODER)
    meta = cast(dict[str, Any], encoder.meta)  # set by load_encoder
    if reg.promote_metric not in metrics:
        from ssl_components.errors import ConfigError

        raise ConfigError(f"register.promote_metric {reg.promote_metric!r} is not a metric; use one of {sorted(metrics)}")
    experiment_id = _experiment_id(cfg)
    run_name = f"{meta['method']}-{meta['backbone']}-{time.strftime('%Y%m%d-%H%M%S')}"
    tags = {
        "data_version": data_version(cfg.paths.data),
        "git_commit": git_commit(),
        "profile": cfg.profile,
        "method": meta["method"],
        "backbone": meta["backbone"],
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in cfg.flat().items()})
        for record in history:
            mlflow.log_metrics({f"pretrain_{k}": v for k, v in record.items() if k != "epoch"}, step=record["epoch"])
        mlflow.log_metrics(metrics)
        for path in (cfg.paths.reports / "plots", cfg.paths.reports / "validation.md"):
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.is_file():
                mlflow.log_artifact(str(path))
        size = meta["image_size"]
        example = np.zeros((2, meta["in_channels"], size, size), dtype=np.float32)
        info = mlflow.pytorch.log_model(encoder, name="encoder", input_example=example, registered_model_name=reg.model_name, metadata=meta)
    client = _client(cfg)
    version = str(info.registered_model_version)
    client.set_registered_model_alias(reg.model_name, CHALLENGER, version)
    client.set_model_version_tag(reg.model_name, version, reg.promote_metric, str(metrics[reg.promote_metric]))

    current = _champion(client, reg.model_name)
    score = float(metrics[reg.promote_metric])
    best = None if current is None else client.get_run(current.run_id).data.metrics.get(reg.promote_metric)
    promoted = best is None or score > best
    if promoted:
        client.set_registered_model_alias(reg.model_name, CHAMPION, version)
    log.info(
        "register: version %s (%s=%.4f) %s",
        version,
        reg.promote_metric,
        score,
        "promoted to champion" if promoted else f"stays challenger (champion v{current.version}: {best:.4f})",
    )
    result = {
        "model_name": reg.model_name,
        "version": version,
        "run_id": run.info.run_id,
        "promoted": promoted,
        "champion_version": version if promoted else str(current.version),
        "metric": reg.promote_metric,
        "score": score,
        "champion_score": score if promoted else best,
        "previous_champion": None if current is None else str(current.version),
    }
    write_json(cfg.paths.reports / "registry.json", result)
    return result


def load_registered_encoder(cfg: Config, alias: str = CHAMPION):
    """The encoder behind `models:/<model_name>@<alias>`, as a callable torch module (no unpickling)."""
    return _mlflow(cfg).pytorch.load_model(f"models:/{cfg.register_.model_name}@{alias}")


def registry_rows(cfg: Config) -> list[dict]:
    """Every version of the registered model, newest first, with aliases and the promotion metric."""
    from mlflow.exceptions import MlflowException

    client = _client(cfg)
    name = cfg.register_.model_name
    try:
        versions = client.search_model_versions(f"name='{name}'")
        aliases = client.get_registered_model(name).aliases  # alias -> version
    except MlflowException:
        return []
    rows = []
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        run = client.get_run(mv.run_id)
        rows.append(
            {
                "version": str(mv.version),
                "aliases": ",".join(sorted(a for a, v in aliases.items() if str(v) == str(mv.version))),
                "created": time.strftime("%Y-%m-%d %H:%M", time.localtime(mv.creation_timestamp / 1000)),
                "run_id": mv.run_id,
                "data_version": run.data.tags.get("data_version", "")[:10],
                # the encoder's own accuracies; baselines stay in the run
                **{
                    k: round(v, 4)
                    for k, v in sorted(run.data.metrics.items())
                    if k.endswith("_acc") and not k.startswith(("raw_pixel", "random_init", "supervised"))
                },
            }
        )
    return rows
