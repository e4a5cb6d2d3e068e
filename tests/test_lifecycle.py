"""The pipeline as a user lives with it, through real Prefect flow runs: settings changed and changed back, and a
folder source that gains images between runs (the gate re-scores the champion on the new test split)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import tiny_params

pytestmark = pytest.mark.slow


def _flow(project: Path, monkeypatch) -> dict:
    from flows.pipeline import ssl_pipeline

    monkeypatch.chdir(project)
    return ssl_pipeline(params_path="params.yaml")


def _metrics(project: Path) -> dict:
    return json.loads((project / "reports" / "metrics.json").read_text())


def test_settings_a_then_b_then_a_again_gives_the_first_results(tmp_path, fmnist_folder, prefect_harness, monkeypatch):
    project = tmp_path / "project"
    project.mkdir()
    a = tiny_params(fmnist_folder)
    b = tiny_params(fmnist_folder, cache_views={"crop_scale": [0.6, 1.0]})
    (project / "params.yaml").write_text(yaml.safe_dump(a))
    first = _flow(project, monkeypatch)
    first_metrics = _metrics(project)

    (project / "params.yaml").write_text(yaml.safe_dump(b))
    second = _flow(project, monkeypatch)
    assert second["ran"] == ["cache_views", "pretrain", "evaluate", "register"]  # ingest and validate were up to date
    assert second["results"]["register"]["version"] == "2"

    (project / "params.yaml").write_text(yaml.safe_dump(a))  # back to A
    third = _flow(project, monkeypatch)
    assert third["ran"] == ["cache_views", "pretrain", "evaluate", "register"]
    assert third["results"]["pretrain"]["resumed_from_epoch"] == 0  # B's checkpoint is never resumed into A
    assert _metrics(project) == first_metrics
    reg = third["results"]["register"]
    assert reg["registered"] is False and reg["identical_to"] == first["results"]["register"]["version"] == "1"
    assert sorted(p.name for p in (project / "data" / "cache" / "views").iterdir()) == [third["results"]["cache_views"]["key"]]


def _copy(src: Path, dst: Path, start: int, stop: int) -> None:
    """Images start..stop-1 (sorted) of every class of every split folder of `src`, into `dst` (same layout)."""
    for split in ("train", "test"):
        for cls in sorted((src / split).iterdir()):
            (dst / cls.name).mkdir(parents=True, exist_ok=True)  # no split folders: ingest splits by content
            for png in sorted(cls.iterdir())[start:stop]:
                shutil.copy(png, dst / cls.name / f"{split}_{png.name}")


def test_a_growing_folder_keeps_splits_and_the_gate_rescores_the_champion_on_the_new_test_split(
    tmp_path, fmnist_folder, prefect_harness, monkeypatch
):
    from flows.registry import _champion_encoder, _client, registry_rows
    from ssl_components.config import load_config
    from ssl_components.data import load_dataset
    from ssl_components.evaluation import score_encoder

    project = tmp_path / "project"
    images = project / "images"
    _copy(fmnist_folder, images, 0, 5)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params("images", ingest={"test_fraction": 0.25})))
    first = _flow(project, monkeypatch)
    assert first["results"]["register"]["promoted"] is True
    before = pd.read_parquet(project / "data" / "manifest.parquet").set_index("id")["split"]
    assert set(before) == {"train", "test"}

    _copy(fmnist_folder, images, 5, 30)  # new images arrive (no split folders: ingest assigns splits)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["register"]["min_improvement"] = 0.5  # a gain under the margin is never promoted
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    second = _flow(project, monkeypatch)
    assert second["ran"] == ["ingest", "validate", "cache_views", "pretrain", "evaluate", "register"]
    after = pd.read_parquet(project / "data" / "manifest.parquet").set_index("id")["split"]
    assert (len(before), len(after)) == (100, 320) and (after.loc[before.index] == before).all()  # no old image moved
    reg = second["results"]["register"]
    assert reg["version"] == "2" and reg["promoted"] is False and reg["compared_with"] == "1"

    # the champion was scored again on the *new* test split, by the same code
    cfg = load_config("params.yaml")
    client = _client(cfg)
    v1 = _champion_encoder(cfg, client, client.get_model_version(cfg.register_.model_name, "1"))
    train, test = load_dataset(cfg.paths.data, "train"), load_dataset(cfg.paths.data, "test")
    rescored = score_encoder(v1, train, test, cfg.evaluate, ["linear_probe_acc"], cfg.seed)["linear_probe_acc"]
    assert reg["champion_score"] == pytest.approx(rescored, abs=1e-9)
    assert len(test) > len(before[before == "test"])
    rows = {r["version"]: r for r in registry_rows(cfg)}
    assert "champion" in rows["1"]["aliases"] and rows["2"]["gate"].startswith("kept as challenger (")

    third = _flow(project, monkeypatch)  # nothing changed
    assert third["ran"] == [] and [r["version"] for r in registry_rows(cfg)] == ["2", "1"]
