"""End to end: the Prefect flow on a few hundred real PNG files, then the registry gate."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml
from conftest import tiny_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, fmnist_folder, prefect_harness):
    """A project folder after one full flow run."""
    from flows.pipeline import ssl_pipeline

    root = tmp_path_factory.mktemp("project")
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(fmnist_folder)))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        out = ssl_pipeline(params_path="params.yaml")
    finally:
        os.chdir(cwd)
    return root, out


def test_flow_runs_every_stage_and_writes_outputs(project):
    root, out = project
    results = out["results"]
    assert list(results) == out["ran"] == ["ingest", "validate", "cache_views", "pretrain", "evaluate", "register"]
    assert results["ingest"]["images"] == 320 and results["ingest"]["classes"] == 10
    assert results["validate"]["passed"] is True
    assert results["pretrain"]["epochs"] == 2
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    for key in (
        "knn_acc",
        "linear_probe_acc",
        "finetune_10pct_acc",
        "finetune_50pct_acc",
        "raw_pixel_linear_probe_acc",
        "random_init_knn_acc",
        "random_init_linear_probe_acc",
        "supervised_10pct_acc",
        "supervised_50pct_acc",
    ):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["linear_probe_acc"] > 0.3  # 10 classes: chance is 0.1
    for name in ("loss_curve", "confusion_matrix", "embedding_map", "accuracy"):
        assert (root / "reports" / "plots" / f"{name}.png").stat().st_size > 1000


def test_first_encoder_becomes_champion_and_loads_without_pickle(project, monkeypatch):
    from flows.registry import load_registered_encoder, registry_rows
    from ssl_components.config import load_config

    root, out = project
    reg = out["results"]["register"]
    assert reg["version"] == "1" and reg["promoted"] is True and reg["registered"] is True
    monkeypatch.chdir(root)
    cfg = load_config("params.yaml")
    rows = registry_rows(cfg)
    assert rows[0]["version"] == "1" and set(rows[0]["aliases"].split(",")) == {"challenger", "champion"}
    encoder = load_registered_encoder(cfg)
    out = encoder(torch.zeros(3, 1, 28, 28))
    assert out.shape[0] == 3 and torch.isfinite(out).all()
    from ssl_components.backbones import load_encoder, normalize

    x = normalize(torch.randint(0, 255, (4, 1, 28, 28), dtype=torch.uint8))
    torch.testing.assert_close(encoder(x), load_encoder(root / "models" / "encoder.pt")(x), atol=1e-4, rtol=1e-4)


def test_mlflow_run_has_params_curve_metrics_plots_and_versions(project):
    import mlflow

    root, out = project
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow/mlflow.db")
    run = mlflow.get_run(out["results"]["register"]["run_id"])
    assert run.data.params["pretrain.method"] == "simclr"
    assert len(run.data.tags["data_version"]) == 64 and run.data.tags["git_commit"]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "pretrain_loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in artifacts
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "encoder_state")] == ["encoder_state/encoder.pt"]
    version = mlflow.MlflowClient().get_model_version("ssl-encoder", "1")
    assert len(version.tags["encoder_sha256"]) == 64 and version.tags["gate.decision"] == "promoted"
    assert run.data.tags["gate.decision"] == "promoted" and run.data.metrics["gate_promoted"] == 1.0


def test_second_flow_run_does_no_work_and_registers_nothing(project, monkeypatch):
    from flows.pipeline import ssl_pipeline
    from flows.registry import registry_rows
    from ssl_components.config import load_config

    root, _ = project
    monkeypatch.chdir(root)
    encoder = root / "models" / "encoder.pt"
    before = encoder.stat().st_mtime_ns
    out = ssl_pipeline(params_path="params.yaml")
    assert out["ran"] == []  # every stage up to date: nothing trained, nothing registered
    assert encoder.stat().st_mtime_ns == before
    assert [r["version"] for r in registry_rows(load_config("params.yaml"))] == ["1"]
    assert out["results"]["register"]["version"] == "1"


def _other_encoder(root, scale: float):
    """A different encoder (weights scaled) in models/encoder.pt: another candidate for the gate."""
    import torch

    from ssl_components.backbones import load_encoder, save_encoder

    path = root / "models" / "encoder.pt"
    encoder = load_encoder(path)
    with torch.no_grad():
        for p in encoder.parameters():
            p.mul_(scale)
    save_encoder(encoder, encoder.meta, path)


def test_registry_gate_rescores_the_champion_and_needs_the_margin(project, tmp_path, monkeypatch):
    import shutil

    from flows.registry import register_run, registry_rows
    from mlflow import MlflowClient
    from ssl_components.config import load_config

    root = tmp_path / "copy"
    shutil.copytree(project[0], root)
    monkeypatch.chdir(root)
    cfg = load_config("params.yaml")
    margin = cfg.register_.min_improvement
    metrics_path = root / "reports" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    champion_score = metrics["linear_probe_acc"]  # v1 on this data, by the same code

    def register(scale: float, score: float) -> dict:
        _other_encoder(root, scale)
        metrics_path.write_text(json.dumps({**metrics, "linear_probe_acc": score}))
        return register_run(cfg)

    worse = register(1.01, champion_score - 0.05)
    assert worse["version"] == "2" and worse["promoted"] is False and worse["champion_version"] == "1"
    assert worse["champion_score"] == pytest.approx(champion_score, abs=1e-9)  # re-scored, same code, same data
    under = register(1.02, champion_score + margin / 2)
    assert under["version"] == "3" and under["promoted"] is False and under["decision"] == "kept as challenger"
    better = register(1.03, champion_score + margin + 0.01)
    assert better["version"] == "4" and better["promoted"] is True and better["previous_champion"] == "1"
    tags = MlflowClient().get_model_version("ssl-encoder", "4").tags
    assert tags["gate.champion_version"] == "1" and float(tags["gate.champion_score"]) == pytest.approx(champion_score)
    assert tags["gate.min_improvement"] == str(margin) and tags["gate.decision"] == "promoted" and tags["gate.time"]

    again = register_run(cfg)  # the same encoder once more (a retried or repeated register)
    assert again["registered"] is False and again["identical_to"] == "4" and again["version"] == "4"

    MlflowClient().delete_model_version("ssl-encoder", "4")  # the champion is deleted by hand
    after_delete = register(1.04, champion_score)
    assert after_delete["version"] == "5" and after_delete["promoted"] is True and after_delete["previous_champion"] is None

    aliases = {r["version"]: set(filter(None, r["aliases"].split(","))) for r in registry_rows(cfg)}
    assert aliases == {"5": {"champion", "challenger"}, "3": set(), "2": set(), "1": set()}

    import subprocess
    import sys

    by_hand = subprocess.run([sys.executable, "-m", "flows.cli", "promote", "2"], cwd=root, capture_output=True, text=True)
    assert by_hand.returncode == 0 and by_hand.stdout.strip() == "ssl-encoder v2 is now champion"
    tags = MlflowClient().get_model_version("ssl-encoder", "2").tags
    assert tags["gate.decision"] == "promoted by hand" and tags["gate.champion_version"] == "5"
    missing = subprocess.run([sys.executable, "-m", "flows.cli", "promote", "9"], cwd=root, capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip().splitlines()[-1].startswith(
        "error: 'ssl-encoder' has no version 9 in sqlite:///"
    )


def test_bad_data_stops_the_flow_before_training(tmp_path, fmnist_folder, prefect_harness, monkeypatch):
    import shutil

    from flows.pipeline import ssl_pipeline
    from ssl_components.errors import DataError

    images = tmp_path / "images"
    shutil.copytree(fmnist_folder, images)
    for i, name in enumerate(sorted((images / "train").rglob("*.png"))[:40]):
        name.write_bytes(b"" if i % 2 else b"not a png")
    raw = tiny_params(images, validate={"min_rows": 50, "max_bad_fraction": 0.05})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="validation failed"):
        ssl_pipeline(params_path="params.yaml")
    assert (tmp_path / "reports" / "validation.md").is_file()
    assert not (tmp_path / "models").exists()
