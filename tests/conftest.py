"""Shared fixtures for the end-to-end tests: a small folder of real Fashion-MNIST PNGs and tiny settings."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")


def write_fashion_mnist_folder(root: Path, per_class_train: int = 24, per_class_test: int = 8) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png from the real data set (a few hundred files)."""
    from ssl_components.data.sources import fashion_mnist

    table = fashion_mnist(ROOT / "data" / "raw", cap=2000)
    rows = table.rows
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        part = rows[rows["split"] == split]
        for label, group in part.groupby("label_name"):
            for i in group.index[:per_class]:
                out = root / split / f"class_{label}" / f"{i:05d}.png"
                out.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.asarray(table.pixels[i]), mode="L").save(out)
    return root


@pytest.fixture(scope="session")
def fmnist_folder(tmp_path_factory) -> Path:
    return write_fashion_mnist_folder(tmp_path_factory.mktemp("fmnist_png"))


TINY_OVERRIDES = {
    "ingest": {"source": "folder", "image_size": 28, "channels": 1},
    "validate": {"min_rows": 50},
    "cache_views": {"num_pairs": 2},
    "pretrain": {"width": 8, "epochs": 2, "batch_size": 64, "proj_hidden": 64, "proj_dim": 32, "warmup_epochs": 0},
    "evaluate": {
        "knn_k": 20,
        "probe_epochs": 10,
        "finetune_epochs": 2,
        "finetune_min_steps": 0,
        "label_fractions": [0.1, 0.5],
        "embedding_points": 80,
    },
}


def tiny_params(image_path: str | Path, **sections) -> dict:
    """The project's params.yaml with tiny settings for a few hundred images; `sections` override further."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in {**TINY_OVERRIDES, **sections}.items():
        raw[section] = {**raw[section], **copy.deepcopy(TINY_OVERRIDES.get(section, {})), **values}
    raw["ingest"]["path"] = str(image_path)
    return raw


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real `prefect server start` for the whole session; yields the env that points a process at it."""
    from servers import start_prefect_server, stop

    proc, env = start_prefect_server(tmp_path_factory.mktemp("prefect_home"))
    try:
        yield env
    finally:
        stop(proc)


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server and database for the whole test session (starting one costs ~8 s)."""
    from prefect.testing.utilities import prefect_test_harness

    # a fresh database on a cold 2-core machine can take longer than the harness's 30 s default to come up
    with prefect_test_harness(server_startup_timeout=180):
        yield
