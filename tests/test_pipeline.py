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
        results = ssl_pipeline(params_path="params.yaml")
    finally:
        os.chdir(cwd)
    return root, results


def test_flow_runs_every_stage_and_writes_outputs(project):
    root, results = project
    assert list(results) == ["ingest", "validate", "cache_views", "pretrain", "evaluate", "register"]
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

    root, results = project
    reg = results["register"]
    assert reg["version"] == "1" and reg["promoted"] is True
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

    root, results = project
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow/mlflow.db")
    run = mlflow.get_run(results["register"]["run_id"])
    assert run.data.params["pretrain.method"] == "simclr"
    assert len(run.data.tags["data_version"]) == 64 and run.data.tags["git_commit"]
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "pretrain_loss")
    assert [m.step for m in history] == [1, 2]
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/confusion_matrix.png" in artifacts


def test_registry_gate_keeps_a_worse_challenger_out_and_promotes_a_better_one(project, monkeypatch):
    from flows.stages import run_stage
    from ssl_components.config import load_config

    root, _ = project
    monkeypatch.chdir(root)
    cfg = load_config("params.yaml")
    metrics_path = root / "reports" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    champion_score = metrics["linear_probe_acc"]

    metrics_path.write_text(json.dumps({**metrics, "linear_probe_acc": champion_score - 0.05}))
    worse = run_stage("register", cfg)
    assert worse["version"] == "2" and worse["promoted"] is False and worse["champion_version"] == "1"

    metrics_path.write_text(json.dumps({**metrics, "linear_probe_acc": champion_score + 0.05}))
    better = run_stage("register", cfg)
    assert better["version"] == "3" and better["promoted"] is True and better["previous_champion"] == "1"

    from flows.registry import registry_rows

    aliases = {r["version"]: set(filter(None, r["aliases"].split(","))) for r in registry_rows(cfg)}
    assert aliases == {"3": {"champion", "challenger"}, "2": set(), "1": set()}


def test_second_flow_run_reuses_unchanged_stages(project, monkeypatch):
    from flows.pipeline import ssl_pipeline

    root, _ = project
    monkeypatch.chdir(root)
    encoder = root / "models" / "encoder.pt"
    before = encoder.stat().st_mtime_ns
    results = ssl_pipeline(params_path="params.yaml")
    assert encoder.stat().st_mtime_ns == before  # pretrain was a cache hit, not a re-run
    assert int(results["register"]["version"]) >= 2  # register always runs


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
