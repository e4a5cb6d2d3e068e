"""Watched while it trains: the kNN monitor on a labelled part of the train split, early stopping on it, and
the monitor curve in the loss-curve plot."""

from __future__ import annotations

import pytest
import torch
from conftest import ROOT
from methodkit import bar_images
from methodkit import train as method_train

from ssl_components import metrics
from ssl_components.backbones import build_backbone, load_encoder
from ssl_components.config import build_config
from ssl_components.errors import ConfigError
from ssl_components.evaluation import extract_features, knn_accuracy
from ssl_components.methods import METHODS
from ssl_components.monitor import EarlyStopping, KnnMonitor, monitor_split
from ssl_components.training import CHECKPOINT, pretrain
from ssl_components.views import ViewProvider

MON = metrics.MONITOR_KNN
TINY = [
    "cache_views.mode=online",
    "pretrain.width=8",
    "pretrain.batch_size=64",
    "pretrain.proj_hidden=32",
    "pretrain.proj_dim=16",
    "pretrain.num_threads=1",  # tiny convolutions: a second thread only adds waiting on a shared 2-core machine
]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # pretrain sets pretrain.num_threads for the process; put it back
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def fmnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The first 640 real Fashion-MNIST train images (uint8, N x 1 x 28 x 28) and their labels."""
    from ssl_components.data.sources import fashion_mnist

    table = fashion_mnist(ROOT / "data" / "raw", cap=640)
    train = (table.rows["split"] == "train").to_numpy()
    assert table.pixels is not None
    images = torch.from_numpy(table.pixels[train].copy()).unsqueeze(1)
    labels = torch.from_numpy(table.rows["label_name"].to_numpy()[train].astype("int64"))
    return images, labels


def _run(tmp_path, name, images, labels, overrides=(), **kw) -> dict:
    cfg = build_config({}, overrides=[*TINY, *overrides])
    views = ViewProvider(cfg.cache_views, images, tmp_path / "views", 0, "test-data")
    data = None if labels is None else (images, labels)
    return pretrain(cfg.pretrain, views, len(images), tuple(images.shape[1:]), tmp_path / name, 0, "k", monitor_data=data, **kw)


def _history(tmp_path, name) -> list[dict]:
    return torch.load(tmp_path / name / CHECKPOINT, weights_only=True)["history"]


def _without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_s", "monitor_seconds")} for h in history]


def _weights(tmp_path, name) -> dict[str, torch.Tensor]:
    return torch.load(tmp_path / name / "encoder.pt", weights_only=True)["state_dict"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"weights differ: {k}"


# ------------------------------------------------------------------------------------------ the monitor set
def test_monitor_split_is_stratified_seeded_disjoint_and_never_takes_unlabelled_rows():
    labels = torch.cat([torch.arange(1000) % 10, torch.full((200,), -1)])  # 100 per class, then 200 unlabelled
    bank, queries = monitor_split(labels, 400, seed=3)
    assert len(bank) == len(queries) == 200
    assert not set(bank.tolist()) & set(queries.tolist())
    assert (labels[bank] >= 0).all() and (labels[queries] >= 0).all()
    assert torch.bincount(labels[bank], minlength=10).tolist() == [20] * 10
    assert torch.bincount(labels[queries], minlength=10).tolist() == [20] * 10
    again = monitor_split(labels, 400, seed=3)
    assert torch.equal(again[0], bank) and torch.equal(again[1], queries)
    assert not torch.equal(monitor_split(labels, 400, seed=4)[0], bank)
    # more images asked for than there are labelled ones: every labelled row, half in each part
    bank, queries = monitor_split(labels, 5000, seed=0)
    assert sorted(bank.tolist() + queries.tolist()) == list(range(1000))
    assert monitor_split(torch.full((50,), -1), 20, seed=0)[0].numel() == 0


def test_a_check_restores_train_mode_and_draws_nothing_from_the_global_rng(fmnist):
    images, labels = fmnist
    monitor = KnnMonitor(images, labels, 200, k=20, seed=0)
    encoder = build_backbone("small_cnn", 1, 8).train()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    acc = monitor(encoder)
    assert encoder.training
    assert torch.equal(torch.get_rng_state(), before)
    assert 0.0 <= acc <= 1.0


# --------------------------------------------------------------------------------- monitored pretraining
def test_monitor_values_at_the_checked_epochs_are_accuracies_above_chance_on_fashion_mnist(tmp_path, fmnist):
    images, labels = fmnist  # 640 images, 10 classes: chance is about 0.1
    result = _run(tmp_path, "a", images, labels, ["pretrain.epochs=5", "pretrain.monitor_every=2", "pretrain.monitor_images=400"])
    history = _history(tmp_path, "a")
    checked = [h["epoch"] for h in history if MON in h]
    assert checked == [2, 4, 5]  # every 2 epochs, and after the last
    values = [h[MON] for h in history if MON in h]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert min(values) > 0.4, values
    assert result[MON] == values[-1] and result[f"best_{MON}"] == max(values)
    assert result["encoder_epoch"] == 5 and result["stopped_early"] is False and result["stop_reason"] is None
    # the last check is the weighted kNN of the saved (last) encoder on the monitor's bank / query split
    bank, queries = monitor_split(labels, 400, seed=0)
    encoder = load_encoder(tmp_path / "a" / "encoder.pt")
    expected = knn_accuracy(
        extract_features(encoder, images[bank]), labels[bank], extract_features(encoder, images[queries]), labels[queries], k=20
    )
    assert values[-1] == pytest.approx(expected, abs=1e-9)
    # per-epoch run metrics: the monitor beside the loss on checked epochs only
    logged = [metrics.epoch_metrics(h) for h in history]
    assert [h["epoch"] for h, m in zip(history, logged) if metrics.EPOCH_PREFIX + MON in m] == [2, 4, 5]
    assert all(metrics.EPOCH_PREFIX + "loss" in m and "pretrain_epoch" not in m for m in logged)


def test_losses_and_weights_are_identical_with_and_without_the_monitor(tmp_path, fmnist):
    images, labels = fmnist
    _run(tmp_path, "watched", images, labels, ["pretrain.epochs=3", "pretrain.monitor_images=300"])
    _run(tmp_path, "unwatched", images, labels, ["pretrain.epochs=3", "pretrain.monitor_every=0"])
    watched, unwatched = _history(tmp_path, "watched"), _history(tmp_path, "unwatched")
    assert [MON in h for h in watched] == [True] * 3 and not any(MON in h for h in unwatched)
    assert [h["loss"] for h in watched] == [h["loss"] for h in unwatched]  # exactly: same RNG stream, train mode kept
    _assert_same_weights(_weights(tmp_path, "watched"), _weights(tmp_path, "unwatched"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_is_monitored_without_changing_its_losses(tmp_path, method):
    images, labels = bar_images(96)
    extra = ["pretrain.backbone=vit_tiny", "pretrain.width=32"] if method == "mae" else []
    common = ["pretrain.epochs=2", "pretrain.batch_size=32", "pretrain.monitor_images=60", "pretrain.monitor_knn_k=5", *extra]
    method_train(tmp_path, "watched", method, images, common, monitor_data=(images, labels))
    method_train(tmp_path, "unwatched", method, images, [*common, "pretrain.monitor_every=0"], monitor_data=(images, labels))
    watched, unwatched = _history(tmp_path, "watched"), _history(tmp_path, "unwatched")
    assert all(0.0 <= h[MON] <= 1.0 for h in watched)
    assert [h["loss"] for h in watched] == [h["loss"] for h in unwatched]


# ----------------------------------------------------------------------------------------- early stopping
def test_early_stopping_counts_checks_without_a_strictly_better_value():
    stop = EarlyStopping(patience=2)
    assert stop.update(1, 0.5) and stop.update(2, 0.6)
    assert not stop.update(3, 0.6) and not stop.stopped  # equal is not better
    assert stop.update(4, 0.7) and stop.checks_without_improvement == 0
    assert not stop.update(5, 0.1) and not stop.update(6, 0.69)
    assert stop.stopped_epoch == 6 and stop.best_epoch == 4
    assert EarlyStopping.from_state(stop.state()) == stop
    never = EarlyStopping(patience=0)
    for epoch in range(1, 10):
        never.update(epoch, 0.5)
    assert not never.stopped


# A run built to plateau: every monitor image has the same label, so every check scores exactly 1.0 and only
# the first one is an improvement. With patience 2 the run must stop after epoch 3 of 6.
PLATEAU = ["pretrain.epochs=6", "pretrain.early_stop_patience=2", "pretrain.monitor_images=200", "pretrain.warmup_epochs=1"]


def test_early_stopping_stops_after_patience_checks_of_a_plateau_and_keeps_the_best_encoder(tmp_path, fmnist):
    images = fmnist[0]
    one_class = torch.zeros(len(images), dtype=torch.long)
    result = _run(tmp_path, "plateau", images, one_class, PLATEAU)
    history = _history(tmp_path, "plateau")
    assert [h["epoch"] for h in history] == [1, 2, 3] and [h[MON] for h in history] == [1.0, 1.0, 1.0]
    assert result["epochs"] == 3 and result["stopped_early"] is True and result["encoder_epoch"] == 1
    assert result["stop_reason"].startswith("early stop after epoch 3: the kNN monitor accuracy has not improved for 2 checks")
    # the saved encoder is the epoch-1 one: the same weights as a 1-epoch run (warm-up makes epoch 1 the same)
    _run(tmp_path, "one_epoch", images, one_class, ["pretrain.epochs=1", "pretrain.warmup_epochs=1", "pretrain.monitor_every=0"])
    _assert_same_weights(_weights(tmp_path, "plateau"), _weights(tmp_path, "one_epoch"))
    # running again on the stopped run's checkpoint trains nothing more
    again = _run(tmp_path, "plateau", images, one_class, PLATEAU)
    assert again["epochs"] == 3 and again["resumed_from_epoch"] == 3 and again["stopped_early"] and again["encoder_epoch"] == 1
    _assert_same_weights(_weights(tmp_path, "plateau"), _weights(tmp_path, "one_epoch"))


def test_killed_and_resumed_run_with_early_stopping_matches_an_uninterrupted_one(tmp_path, fmnist):
    images = fmnist[0]
    one_class = torch.zeros(len(images), dtype=torch.long)
    straight = _run(tmp_path, "straight", images, one_class, PLATEAU)

    def kill(record):
        if record["epoch"] == 2:  # one check without improvement is counted, one more stops the run
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "resumed", images, one_class, PLATEAU, on_epoch_end=kill)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["early_stop"]["checks_without_improvement"] == 1
    resumed = _run(tmp_path, "resumed", images, one_class, PLATEAU)
    assert resumed["resumed_from_epoch"] == 2
    assert _without_timings(_history(tmp_path, "resumed")) == _without_timings(_history(tmp_path, "straight"))
    for key in ("epochs", "encoder_epoch", "stopped_early", "stop_reason"):
        assert resumed[key] == straight[key], key
    _assert_same_weights(_weights(tmp_path, "resumed"), _weights(tmp_path, "straight"))


def test_early_stopping_on_fashion_mnist_stops_where_the_unstopped_run_first_fails_to_improve(tmp_path, fmnist):
    images, labels = fmnist
    common = ["pretrain.epochs=6", "pretrain.monitor_images=400", "pretrain.lr=0.02", "pretrain.warmup_epochs=0"]
    _run(tmp_path, "full", images, labels, common)
    full = _history(tmp_path, "full")
    values = [h[MON] for h in full]
    # patience 1: the first epoch whose check is not strictly above every earlier one
    expected = next(i + 1 for i in range(1, len(values)) if values[i] <= max(values[:i]))
    assert expected < 6, f"the constructed run did not plateau: {values}"
    result = _run(tmp_path, "stopped", images, labels, [*common, "pretrain.early_stop_patience=1"])
    stopped = _history(tmp_path, "stopped")
    assert result["epochs"] == expected and result["stopped_early"]
    assert _without_timings(stopped) == _without_timings(full[:expected])
    assert result["encoder_epoch"] == values.index(max(values[:expected])) + 1


def test_early_stopping_without_the_monitor_or_without_labels_is_a_clear_error(tmp_path, fmnist):
    with pytest.raises(ConfigError, match="early_stop_patience needs the kNN monitor"):
        build_config({}, overrides=["pretrain.early_stop_patience=2", "pretrain.monitor_every=0"])
    images = fmnist[0]
    with pytest.raises(ConfigError, match="early_stop_patience needs labelled train images"):
        _run(tmp_path, "nolabels", images, torch.full((len(images),), -1), ["pretrain.early_stop_patience=2"])
    with pytest.raises(ConfigError, match="early_stop_patience needs labelled train images"):
        _run(tmp_path, "nodata", images, None, ["pretrain.early_stop_patience=2"])
    # without labels and without early stopping, training runs unmonitored
    _run(tmp_path, "unmonitored", images[:128], torch.full((128,), -1), ["pretrain.epochs=1"])
    assert not any(MON in h for h in _history(tmp_path, "unmonitored"))


# ------------------------------------------------------------------------------------------------- the plot
def test_loss_curve_draws_the_monitor_curve_in_a_second_panel(tmp_path):
    import matplotlib.pyplot as plt

    from ssl_components import plots

    history = [{"epoch": e, "loss": 5 - 0.3 * e, "lr": 1e-3} for e in range(1, 7)]
    for e, acc in ((2, 0.61), (4, 0.72), (6, 0.70)):
        history[e - 1][MON] = acc
    fig = plots.loss_curve_figure(history)
    try:
        curves = [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == plots.MONITOR_LABEL]
        assert len(curves) == 1
        assert list(curves[0].get_xdata()) == [2, 4, 6] and list(curves[0].get_ydata()) == [0.61, 0.72, 0.70]
        assert curves[0].axes is not fig.axes[0]  # its own panel, not the loss axes
        assert [line.get_label() for line in fig.axes[0].get_lines()] == ["loss"]
    finally:
        plt.close(fig)
    unmonitored = plots.loss_curve_figure([{k: v for k, v in h.items() if k != MON} for h in history])
    try:
        assert not [line for ax in unmonitored.axes for line in ax.get_lines() if line.get_label() == plots.MONITOR_LABEL]
        assert len(unmonitored.axes) == 2  # loss and its lr twin only
    finally:
        plt.close(unmonitored)
    with_monitor = plots.loss_curve(history, tmp_path / "with.png").read_bytes()
    without = plots.loss_curve([{k: v for k, v in h.items() if k != MON} for h in history], tmp_path / "without.png").read_bytes()
    assert with_monitor[:4] == b"\x89PNG" and with_monitor != without
