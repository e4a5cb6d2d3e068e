"""The shared pretraining loop: learning, resume after interruption, and clear stops on NaN or collapse."""

import pytest
import torch

from ssl_components.backbones import load_encoder
from ssl_components.config import build_config
from ssl_components.errors import ConfigError, TrainingError
from ssl_components.training import CHECKPOINT, pretrain
from ssl_components.views import ViewProvider


def _images(n=96, size=16, seed=0):
    """Two kinds of synthetic image (a bright bar, horizontal or vertical) at random positions."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        p = int(torch.randint(2, size - 4, (1,), generator=g))
        if i % 2:
            x[i, 0, p : p + 3, :] = 220
        else:
            x[i, 0, :, p : p + 3] = 220
    return x


def _run(tmp_path, name, images, overrides=(), **kw):
    cfg = build_config(
        {},
        overrides=[
            "cache_views.mode=online",
            "pretrain.width=8",
            "pretrain.batch_size=32",
            "pretrain.epochs=3",
            "pretrain.proj_hidden=32",
            "pretrain.proj_dim=16",
            *overrides,
        ],
    )
    views = ViewProvider(cfg.cache_views, images, tmp_path / "views", 0, "test-data")
    return pretrain(cfg.pretrain, views, len(images), tuple(images.shape[1:]), tmp_path / name, seed=0, run_key="k", **kw)


def test_loss_decreases_and_encoder_is_saved(tmp_path):
    result = _run(tmp_path, "a", _images(), ["pretrain.epochs=4"])
    assert result["epochs"] == 4 and result["device"] == "cpu"
    import json

    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert history[-1]["loss"] < history[0]["loss"]
    encoder = load_encoder(tmp_path / "a" / "encoder.pt")
    assert encoder(torch.zeros(2, 1, 16, 16)).shape == (2, encoder.out_dim)
    assert encoder.meta["image_size"] == 16 and encoder.meta["method"] == "simclr"


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    images = _images()
    _run(tmp_path, "straight", images)

    def interrupt(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", images, on_epoch_end=interrupt)
    saved = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert saved["epoch"] == 1  # epochs 1 and 2 are done (0-based index of the last)
    result = _run(tmp_path, "resumed", images)
    assert result["resumed_from_epoch"] == 2

    a = torch.load(tmp_path / "straight" / "encoder.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed" / "encoder.pt", weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=f"weights differ after resume: {k}")
    ha = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)["history"]
    hb = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["history"]
    assert [h["loss"] for h in ha] == pytest.approx([h["loss"] for h in hb], rel=1e-5)


def test_checkpoint_for_other_settings_is_not_resumed(tmp_path):
    images = _images()
    _run(tmp_path, "a", images, ["pretrain.epochs=1"])
    cfg = build_config(
        {},
        overrides=[
            "cache_views.mode=online",
            "pretrain.width=8",
            "pretrain.batch_size=32",
            "pretrain.epochs=1",
            "pretrain.proj_hidden=32",
            "pretrain.proj_dim=16",
        ],
    )
    views = ViewProvider(cfg.cache_views, images, tmp_path / "views", 0, "test-data")
    result = pretrain(cfg.pretrain, views, len(images), (1, 16, 16), tmp_path / "a", seed=0, run_key="other")
    assert result["resumed_from_epoch"] == 0


def test_nan_loss_stops_with_a_clear_error(tmp_path):
    with pytest.raises(TrainingError, match=r"^pretraining diverged: loss is nan.*lower pretrain.lr"):
        _run(tmp_path, "nan", _images(), ["pretrain.temperature=1e-45"])
    assert not (tmp_path / "nan" / "encoder.pt").exists()


def test_collapsed_embeddings_stop_with_a_clear_error(tmp_path):
    blank = torch.zeros(64, 1, 16, 16, dtype=torch.uint8)  # every view identical: nothing to tell apart
    with pytest.raises(TrainingError, match=r"^embeddings collapsed at epoch 1"):
        _run(tmp_path, "collapse", blank)


def test_cuda_requested_without_gpu_is_a_config_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ConfigError, match="no GPU"):
        _run(tmp_path, "gpu", _images(), ["pretrain.device=cuda"])
