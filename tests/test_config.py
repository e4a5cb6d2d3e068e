from pathlib import Path

import pytest
import yaml

from ssl_components.config import build_config, load_config
from ssl_components.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_project_params_load_with_both_profiles():
    quick = load_config(ROOT / "params.yaml")
    full = load_config(ROOT / "params.yaml", profile="full")
    assert quick.profile == "quick" and quick.pretrain.backbone == "small_cnn"
    assert full.pretrain.backbone == "resnet18" and full.cache_views.mode == "online"
    assert full.ingest == quick.ingest  # a profile only changes what it names


def test_overrides_are_typed():
    cfg = build_config({}, overrides=["pretrain.epochs=3", "cache_views.crop_scale=[0.5, 1.0]"])
    assert cfg.pretrain.epochs == 3 and cfg.cache_views.crop_scale == (0.5, 1.0)


@pytest.mark.parametrize(
    "raw, words",
    [
        ({"pretrain": {"epoch": 3}}, ["unknown key", "pretrain.epoch"]),
        ({"pretrain": {"lr": -1}}, ["pretrain.lr", "greater than 0"]),
        ({"ingest": {"source": "folder"}}, ["ingest.path"]),
        ({"cache_views": {"crop_scale": [1.0, 0.2]}}, ["cache_views.crop_scale", "low <= high"]),
        ({"profile": "huge"}, ["profile 'huge' is not defined"]),
        ({"bogus": 1}, ["unknown key 'bogus'"]),
        ({"pretrain": {"pool": [1, 2, 2]}}, ["pretrain.pool", "distinct grid sizes"]),
        ({"pretrain": {"pool": [0]}}, ["pretrain.pool", "from 1 to 16"]),
        ({"evaluate": {"finetune_head_init": "linear"}}, ["evaluate.finetune_head_init"]),
    ],
)
def test_bad_settings_give_one_clear_line(raw, words):
    with pytest.raises(ConfigError) as exc:
        build_config(raw)
    first = str(exc.value).splitlines()[0]
    for w in words:
        assert w in first


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_dvc_yaml_is_generated_from_the_stage_list():
    from flows.dvc import dvc_yaml
    from flows.stages import STAGE_NAMES

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml(raw), "dvc.yaml is stale: run `sslpipe dvc-yaml`"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert list(stages) == STAGE_NAMES
    assert "profiles.full.pretrain" in stages["pretrain"]["params"]
    assert all(s["cmd"] == f"sslpipe stage {name}" for name, s in stages.items())
