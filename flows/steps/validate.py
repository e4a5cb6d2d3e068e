"""validate: the Great Expectations suite on the manifest -> quarantine list and report (fails on bad data)."""

from __future__ import annotations

from ssl_components.config import Config
from ssl_components.validation import validate


def run(cfg: Config, keys: dict[str, str]) -> dict:
    return validate(cfg.validate_, cfg.paths.data, cfg.paths.reports)
