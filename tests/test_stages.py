"""The stage list drives both Prefect caching and dvc.yaml: inputs declared once, seen by both."""

from __future__ import annotations

import yaml
from conftest import ROOT
from imagefactory import write_png

from flows.dvc import dvc_yaml
from flows.pipeline import stage_cache_key
from flows.stages import get_stage
from ssl_components.config import build_config


def _raw(path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"].update(source="folder", path=str(path))
    return raw


def test_ingest_cache_key_follows_the_source_images(tmp_path):
    images = tmp_path / "images"
    for i in range(3):
        write_png(images / "a" / f"{i}.png", seed=i)
    cfg = build_config(_raw(images))
    ingest = get_stage("ingest")
    key = stage_cache_key(ingest, cfg)
    assert stage_cache_key(ingest, cfg) == key  # nothing changed: a cache hit

    write_png(images / "a" / "new.png", seed=99)  # a scheduled run after new data arrived
    assert stage_cache_key(ingest, cfg) != key


def test_a_settings_change_moves_only_the_stages_that_read_it(tmp_path):
    cfg = build_config(_raw(tmp_path))
    changed = build_config(_raw(tmp_path), overrides=["evaluate.knn_k=10"])
    assert stage_cache_key(get_stage("pretrain"), cfg) == stage_cache_key(get_stage("pretrain"), changed)
    assert stage_cache_key(get_stage("evaluate"), cfg) != stage_cache_key(get_stage("evaluate"), changed)


def test_dvc_yaml_lists_the_source_folder_as_an_ingest_dep(tmp_path):
    stages = yaml.safe_load(dvc_yaml(_raw(tmp_path / "images")))["stages"]
    assert str(tmp_path / "images") in stages["ingest"]["deps"]
    fmnist = yaml.safe_load(dvc_yaml(yaml.safe_load((ROOT / "params.yaml").read_text())))["stages"]
    assert fmnist["ingest"]["deps"] == ["ssl_components/data"]
