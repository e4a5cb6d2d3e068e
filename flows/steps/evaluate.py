"""evaluate: kNN, linear probe and low-label fine-tuning of the encoder beside same-run baselines, plus plots."""

from __future__ import annotations

from ssl_components import layout, plots
from ssl_components.config import Config
from ssl_components.data import load_dataset
from ssl_components.device import resolve_device
from ssl_components.evaluation import evaluate_saved_encoder
from ssl_components.io import read_json, write_json


def run(cfg: Config, keys: dict[str, str]) -> dict:
    train, test = load_dataset(cfg.paths.data, "train"), load_dataset(cfg.paths.data, "test")
    device = str(resolve_device("auto"))
    result = evaluate_saved_encoder(cfg.paths.models / layout.ENCODER, train, test, cfg.evaluate, cfg.seed, device)
    metrics = result["metrics"]

    pdir = cfg.paths.reports / layout.PLOTS
    classes = train.classes or [str(i) for i in range(int(train.labels.max()) + 1)]
    plots.loss_curve(read_json(cfg.paths.models / layout.HISTORY), pdir / "loss_curve.png")
    plots.confusion_matrix(result["test_labels"], result["predictions"], classes, pdir / "confusion_matrix.png")
    plots.embedding_map(result["test_features"], result["test_labels_subset"], classes, pdir / "embedding_map.png", cfg.seed)
    plots.accuracy_bars(metrics, pdir / "accuracy.png")
    write_json(cfg.paths.reports / layout.METRICS, metrics)  # last: its presence means the plots are there too
    return metrics
