"""register: one MLflow run, the encoder as a model version (once per distinct encoder), and the gate."""

from __future__ import annotations

from flows.registry import register_run
from ssl_components.config import Config


def run(cfg: Config, keys: dict[str, str]) -> dict:
    return register_run(cfg)
