"""The one answer to "what is stale": stage records, on real files, through `execute` (no Prefect needed)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import yaml
from conftest import tiny_params

from flows.records import Hasher, hasher, status
from flows.stages import STAGES, StaleInput, execute, get_stage, upstream
from ssl_components.config import build_config
from ssl_components.errors import DataError


@pytest.fixture
def project(tmp_path, fmnist_folder, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def cfg_of(image_path, *overrides, **sections):
    return build_config(tiny_params(image_path, **sections), overrides=list(overrides))


def statuses(cfg):
    with hasher(cfg) as h:
        return {s.name: status(s, cfg, h) for s in STAGES}


def test_upstream_follows_the_declared_inputs():
    assert [s.name for s in upstream(get_stage("pretrain"))] == ["ingest", "validate", "cache_views"]
    assert [s.name for s in upstream(get_stage("evaluate"))] == ["ingest", "validate", "cache_views", "pretrain"]
    assert upstream(get_stage("ingest")) == []


def test_a_stage_runs_once_then_is_skipped_until_an_input_or_output_changes(project, fmnist_folder):
    cfg = cfg_of(fmnist_folder)
    assert execute(get_stage("ingest"), cfg)[1] is True
    result, ran = execute(get_stage("ingest"), cfg)
    assert ran is False and result["images"] == 320  # the recorded result
    # an output changed by hand: stale, and the record says why
    store = project / "data" / "store.npy"
    store.write_bytes(store.read_bytes()[:-1] + b"\x01")
    st = statuses(cfg)["ingest"]
    assert not st.fresh and st.reason == "output data/store.npy was changed since"
    assert execute(get_stage("ingest"), cfg)[1] is True
    # an output deleted: stale
    (project / "data" / "manifest.parquet").unlink()
    assert statuses(cfg)["ingest"].reason == "output data/manifest.parquet is missing"
    assert execute(get_stage("ingest"), cfg)[1] is True
    assert execute(get_stage("ingest"), cfg)[1] is False


def test_new_source_images_make_ingest_stale(project, fmnist_folder):
    images = project / "images"
    shutil.copytree(fmnist_folder, images)
    cfg = cfg_of(images)
    execute(get_stage("ingest"), cfg)
    assert statuses(cfg)["ingest"].fresh
    shutil.copy(images / "train" / "class_0" / os.listdir(images / "train" / "class_0")[0], images / "train" / "class_0" / "new.png")
    st = statuses(cfg)["ingest"]
    assert not st.fresh and st.reason.startswith("inputs changed: ") and str(images) in st.reason


def test_a_setting_moves_only_the_stages_that_read_it(project, fmnist_folder):
    cfg = cfg_of(fmnist_folder)
    for name in ("ingest", "validate", "cache_views", "pretrain", "evaluate"):
        execute(get_stage(name), cfg)
    assert all(st.fresh for name, st in statuses(cfg).items() if name != "register")

    knn = statuses(cfg_of(fmnist_folder, "evaluate.knn_k=7"))
    assert [n for n, st in knn.items() if not st.fresh] == ["evaluate", "register"]
    assert knn["evaluate"].reason == "settings changed: evaluate"

    crop = statuses(cfg_of(fmnist_folder, "cache_views.crop_scale=[0.5, 1.0]"))
    assert {n for n, st in crop.items() if not st.fresh} == {"cache_views", "pretrain", "register"}
    assert crop["pretrain"].reason == "settings changed: cache_views"


def test_a_stage_refuses_the_outputs_of_a_failed_validation(project, fmnist_folder):
    images = project / "images"
    shutil.copytree(fmnist_folder, images)
    for png in sorted((images / "train").rglob("*.png"))[:40]:
        png.write_bytes(b"not a png")
    cfg = cfg_of(images)
    execute(get_stage("ingest"), cfg)
    with pytest.raises(DataError, match="validation failed"):
        execute(get_stage("validate"), cfg)
    assert not (project / "data" / "quarantine.csv").exists()
    with pytest.raises(StaleInput) as err:
        execute(get_stage("cache_views"), cfg)  # as `sslpipe stage cache_views` by hand would
    assert str(err.value).startswith("stage cache_views needs the outputs of validate, which is out of date (it has not run here yet)")
    assert not (project / "data" / "cache").exists()


def test_a_failed_run_of_a_stage_does_not_pass_as_fresh(project, fmnist_folder):
    cfg = cfg_of(fmnist_folder)
    execute(get_stage("ingest"), cfg)
    execute(get_stage("validate"), cfg)
    assert statuses(cfg)["validate"].fresh
    strict = cfg_of(fmnist_folder, "validate.min_rows=100000")
    with pytest.raises(DataError):
        execute(get_stage("validate"), strict)
    # the failed run removed the quarantine list: the old record no longer matches, whatever settings are asked for
    assert not statuses(cfg)["validate"].fresh and not statuses(strict)["validate"].fresh


def test_hasher_remembers_unchanged_files_and_notices_rewrites(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(b"a" * 1000)
    with Hasher(tmp_path / "h.sqlite") as h:
        first = h.file(f)
    t = time.time_ns()
    with Hasher(tmp_path / "h.sqlite") as h:
        assert h.file(f) == first
        h.db.execute("UPDATE hashes SET sha256 = 'remembered'")  # proves the second lookup reads the table
        assert h.file(f) == "remembered"
        f.write_bytes(b"b" * 1000)  # same size, new content
        os.utime(f, ns=(t + 10**9, t + 10**9))
        assert h.file(f) not in ("remembered", first)


def test_records_are_json_with_inputs_outputs_and_result(project, fmnist_folder):
    cfg = cfg_of(fmnist_folder)
    execute(get_stage("ingest"), cfg)
    record = json.loads((project / ".sslpipe" / "stamps" / "ingest.json").read_text())
    assert set(record) == {"stage", "key", "inputs", "outputs", "result", "finished"}
    assert "ssl_components/data/sources.py" in record["inputs"]["code"]
    assert set(record["outputs"]) == {"data/manifest.parquet", "data/store.npy", "data/classes.json"}
    assert yaml.safe_load(json.dumps(record["inputs"]["params"]))["ingest"]["source"] == "folder"
