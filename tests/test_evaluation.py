"""Evaluation protocol (kNN, linear probe, label subsets, fine-tuning, evaluate_all) and the plots."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from ssl_components.backbones import build_backbone, normalize
from ssl_components.config import EvaluateConfig
from ssl_components.data.dataset import Dataset
from ssl_components.errors import DataError
from ssl_components.evaluation import (
    evaluate_all,
    extract_features,
    finetune,
    fit_linear,
    fraction_tag,
    knn_accuracy,
    knn_predict,
    linear_probe,
    stratified_subset,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: a second thread only adds synchronisation, and on a busy 2-core machine
    oversubscribed threads make this module ~10x slower (measured: 64 s vs 5 s)."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(before)


def _slow_knn_predict(train_f, train_y, test_f, k, t, num_classes, standardize):
    """The protocol written out row by row: (features z-scored with the bank's mean and std,) cosine similarity,
    top-k, class sums of exp(sim / t)."""
    train_f, test_f = train_f.double(), test_f.double()
    if standardize:
        mean, std = train_f.mean(0), train_f.std(0)
        train_f, test_f = (train_f - mean) / std, (test_f - mean) / std
    a = train_f / train_f.norm(dim=1, keepdim=True)
    preds = []
    for row in test_f:
        q = row / row.norm()
        sims = [(float(q @ a[j]), j) for j in range(len(a))]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, j in sims[:k]:
            votes[int(train_y[j])] += math.exp(sim / t)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


@pytest.mark.parametrize("standardize", [True, False])
def test_knn_matches_slow_reference_and_chunking(standardize):
    g = torch.Generator().manual_seed(0)
    # columns of different scales and offsets, as a pooled readout's are
    scale, shift = torch.tensor([0.1, 1, 5, 20, 0.5, 2, 1, 3]), torch.tensor([3.0, 0, 1, 50, 0, 2, 0, 5])
    train_f, test_f = torch.randn(60, 8, generator=g) * scale + shift, torch.randn(25, 8, generator=g) * scale + shift
    train_y, test_y = torch.randint(0, 3, (60,), generator=g), torch.randint(0, 3, (25,), generator=g)
    # t = 0.005: exp(sim / t) overflows float32 above sim = 0.44, the reference computes in float64
    for k, t in ((1, 0.1), (7, 0.1), (20, 0.5), (500, 0.1), (20, 0.005), (500, 0.005)):
        ref = _slow_knn_predict(train_f, train_y, test_f, min(k, 60), t, 3, standardize)
        for chunk in (1, 4, None):
            got = knn_predict(train_f, train_y, test_f, k, t, 3, chunk_size=chunk, standardize=standardize)
            assert torch.equal(got, ref), (k, t, chunk)
        acc = knn_accuracy(train_f, train_y, test_f, test_y, k, t, num_classes=3, chunk_size=4, standardize=standardize)
        assert acc == pytest.approx(float((ref == test_y).float().mean()))


def test_knn_standardized_is_not_ruled_by_a_large_noisy_feature():
    """Four class-blind features 100x larger than the informative ones decide plain cosine similarity; z-scored,
    they count as four dimensions among twelve."""
    g = torch.Generator().manual_seed(2)
    train_y, test_y = torch.arange(4).repeat(50), torch.arange(4).repeat(25)

    def features(y):
        informative = torch.eye(4, 8)[y] + 0.3 * torch.randn(len(y), 8, generator=g)
        return torch.cat([informative, 100 * torch.randn(len(y), 4, generator=g)], dim=1)

    train_f, test_f = features(train_y), features(test_y)
    plain = knn_accuracy(train_f, train_y, test_f, test_y, k=20, t=0.1, num_classes=4, standardize=False)
    z = knn_accuracy(train_f, train_y, test_f, test_y, k=20, t=0.1, num_classes=4)
    assert plain < 0.4 and z > 0.8, (plain, z)  # measured: 0.27 and 0.91


def test_knn_separated_clusters_is_perfect():
    g = torch.Generator().manual_seed(1)
    centers = torch.eye(4, 16) * 10
    train_y, test_y = torch.arange(4).repeat(30), torch.arange(4).repeat(10)
    train_f = centers[train_y] + 0.3 * torch.randn(120, 16, generator=g)
    test_f = centers[test_y] + 0.3 * torch.randn(40, 16, generator=g)
    assert knn_accuracy(train_f, train_y, test_f, test_y, k=20, t=0.1, num_classes=4) == 1.0


def test_linear_probe_separable_and_random_labels():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(20, 3, generator=g)
    x_tr, x_te = torch.randn(1500, 20, generator=g) * 5 + 3, torch.randn(500, 20, generator=g) * 5 + 3
    y_tr, y_te = (x_tr @ w).argmax(1), (x_te @ w).argmax(1)
    acc, pred = linear_probe(x_tr, y_tr, x_te, y_te, 3, epochs=10, lr=0.01, seed=0, device="cpu")
    assert acc > 0.95 and pred.shape == (500,) and pred.dtype == torch.long
    again, _ = linear_probe(x_tr, y_tr, x_te, y_te, 3, epochs=10, lr=0.01, seed=0, device="cpu")
    assert again == acc  # deterministic from the seed

    y_rand_tr, y_rand_te = torch.randint(0, 4, (1500,), generator=g), torch.randint(0, 4, (500,), generator=g)
    acc_rand, _ = linear_probe(x_tr, y_rand_tr, x_te, y_rand_te, 4, epochs=10, lr=0.01, seed=0, device="cpu")
    assert abs(acc_rand - 0.25) < 0.08


def test_stratified_subset():
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate((500, 200, 30, 3))] + [torch.full((40,), -1)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    idx = stratified_subset(labels, 0.1, seed=0)
    counts = torch.bincount(labels[idx], minlength=4).tolist()
    assert counts == [50, 20, 3, 1]  # round(0.1 * n), at least one per class
    assert (labels[idx] >= 0).all() and len(set(idx.tolist())) == len(idx)
    assert torch.equal(idx, stratified_subset(labels, 0.1, seed=0))
    assert not torch.equal(idx, stratified_subset(labels, 0.1, seed=1))
    assert torch.bincount(labels[stratified_subset(labels, 0.001, seed=0)], minlength=4).tolist() == [1, 1, 1, 1]
    assert len(stratified_subset(labels, 1.0, seed=0)) == 733
    assert fraction_tag(0.01) == "1pct" and fraction_tag(0.1) == "10pct" and fraction_tag(0.5) == "50pct"
    assert fraction_tag(0.005) == "0.5pct" and fraction_tag(0.07) == "7pct"


def _bright_side_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: the left half is bright; class 1: the right half (16x16, noisy)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 1, 16, 16, generator=g) * 60
    x[y == 0, :, :, :8] += 150
    x[y == 1, :, :, 8:] += 150
    return x.clamp(0, 255).to(torch.uint8), y


def _bright_side_task():
    """A seeded random-init small_cnn (width 8), 64 train and 40 test bright-side images."""
    torch.manual_seed(0)
    return build_backbone("small_cnn", 1, 8), _bright_side_images(64, 0), _bright_side_images(40, 1)


def test_finetune_leaves_encoder_untouched_and_learns():
    encoder, (x_tr, y_tr), (x_te, y_te) = _bright_side_task()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    # a horizontal flip would swap the classes here, so fine-tune with shifts only
    acc = finetune(encoder, x_tr, y_tr, x_te, y_te, 2, epochs=6, lr=3e-3, seed=0, device="cpu", batch_size=16, flip=False)
    assert acc > 0.8
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert acc == finetune(encoder, x_tr, y_tr, x_te, y_te, 2, epochs=6, lr=3e-3, seed=0, device="cpu", batch_size=16, flip=False)


def test_flip_averaging_gives_an_image_and_its_mirror_one_prediction():
    """flip_tta averages a test image's class probabilities with its mirror image's, so both get the same prediction.
    Here the bright side is the class: without averaging the mirrored test images are read as the other class."""
    encoder, (x_tr, y_tr), (x_te, y_te) = _bright_side_task()
    kwargs = {"epochs": 6, "lr": 3e-3, "seed": 0, "device": "cpu", "batch_size": 16, "flip": False}
    plain, mirrored = (finetune(encoder, x_tr, y_tr, x, y_te, 2, **kwargs) for x in (x_te, x_te.flip(-1)))
    assert plain > 0.8 and mirrored < 0.2
    averaged, averaged_mirrored = (finetune(encoder, x_tr, y_tr, x, y_te, 2, flip_tta=True, **kwargs) for x in (x_te, x_te.flip(-1)))
    assert averaged == averaged_mirrored


def test_mixup_trains_on_blends_learns_and_is_seeded(monkeypatch):
    """With mixup the classifier trains on blends of two labelled images (without it, on the images themselves:
    no shift or flip here), still learns the task, and gives the same result for the same seed."""
    from ssl_components.evaluation import _Classifier

    encoder, (x_tr, y_tr), (x_te, y_te) = _bright_side_task()
    seen: list[torch.Tensor] = []
    forward = _Classifier.forward

    def recording(self, x):
        if self.training and torch.is_grad_enabled():  # training steps, not the BatchNorm re-estimation
            seen.append(x.detach().clone())
        return forward(self, x)

    monkeypatch.setattr(_Classifier, "forward", recording)
    images = normalize(x_tr).flatten(1)

    def trained_on_images(mixup: float) -> tuple[float, float]:
        seen.clear()
        kwargs = {"epochs": 6, "lr": 3e-3, "seed": 0, "device": "cpu", "batch_size": 16, "flip": False, "max_shift": 0}
        acc = finetune(encoder, x_tr, y_tr, x_te, y_te, 2, mixup=mixup, **kwargs)
        rows = torch.cat(seen).flatten(1)
        is_image = (torch.cdist(rows, images, compute_mode="donot_use_mm_for_euclid_dist").min(1).values < 1e-4).float().mean()
        return acc, float(is_image)

    acc, share = trained_on_images(0.0)
    assert acc > 0.8 and share == 1.0
    acc, share = trained_on_images(0.4)
    assert acc > 0.8 and share < 0.2  # measured: 0.12 (a row paired with itself, or lam within 1e-4 of 0 or 1)
    assert trained_on_images(0.4)[0] == acc


def test_probe_head_is_the_linear_probe_on_raw_features():
    """fit_linear folds the probe's standardisation into its weights: on raw features it predicts exactly what
    the probe predicts on standardised ones, and LP-FT's classifier starts from it."""
    from ssl_components.evaluation import _Classifier, _probe_head

    encoder, (x_tr, y_tr), (x_te, y_te) = _bright_side_task()
    ftr, fte = extract_features(encoder, x_tr), extract_features(encoder, x_te)
    acc, pred = linear_probe(ftr, y_tr, fte, y_te, 2, epochs=5, seed=3)
    mean, std = ftr.mean(0), ftr.std(0)
    std = torch.where(std < 1e-6, torch.ones_like(std), std)
    head = fit_linear(ftr, y_tr, 2, epochs=5, seed=3)
    assert torch.equal(head(fte).argmax(1), pred)
    # the folded head equals W (x - mean) / std + b of a probe trained on standardised features
    w_std = head.weight * std  # undo the folding: the weights the probe learnt on standardised features
    b_std = head.bias + (head.weight * mean).sum(1)
    torch.testing.assert_close(((fte - mean) / std) @ w_std.T + b_std, head(fte), atol=1e-4, rtol=1e-4)

    model = _Classifier(encoder, 2, head_norm=False)
    _probe_head(model, x_tr, y_tr, 2, seed=3, device=torch.device("cpu"), batch_size=1024)
    model.eval()
    with torch.inference_mode():
        assert torch.equal(model(normalize(x_te)).argmax(1), pred)
    assert acc == float((pred == y_te).float().mean())


def test_finetune_head_sees_standardised_features():
    """With head_norm (the default), once BatchNorm statistics are re-estimated on the training images the head's
    input is every feature standardised over those images; without it, the encoder's features as they are."""
    from ssl_components.evaluation import _Classifier, _recalibrate_batchnorm

    encoder, (x_tr, _), _ = _bright_side_task()
    seen = {}
    for head_norm in (True, False):
        model = _Classifier(copy.deepcopy(encoder), 2, head_norm)
        # one batch of all 64 images: the encoder's own BatchNorms see in training mode what they see in eval mode
        _recalibrate_batchnorm(model, x_tr, torch.device("cpu"), 64)
        model.eval()
        with torch.inference_mode():
            seen[head_norm] = model.norm(model.encoder(normalize(x_tr)))
        if not head_norm:
            torch.testing.assert_close(seen[False], extract_features(model.encoder, x_tr))
    varying = seen[False].std(0) > 1e-3
    z, plain = seen[True][:, varying], seen[False][:, varying]
    torch.testing.assert_close(z.mean(0), torch.zeros(z.shape[1]), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(z.shape[1]), atol=0.03, rtol=0)
    # the encoder's own features are neither centred nor of unit spread
    assert plain.mean(0).abs().max() > 0.5 and (plain.std(0) - 1).abs().max() > 0.5  # measured: 1.58, 0.95


def test_lp_ft_starts_from_the_probe_and_keeps_the_encoder():
    from ssl_components.evaluation import _Classifier, _probe_head, _recalibrate_batchnorm

    encoder, (x_tr, y_tr), (x_te, y_te) = _bright_side_task()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    # what LP-FT starts from: BatchNorm statistics of the labelled images, then a probe of those features
    start = _Classifier(copy.deepcopy(encoder), 2)
    _recalibrate_batchnorm(start, x_tr, torch.device("cpu"), 16)
    _probe_head(start, x_tr, y_tr, 2, seed=0, device=torch.device("cpu"), batch_size=16)
    start.eval()
    with torch.inference_mode():
        start_acc = float((start(normalize(x_te)).argmax(1) == y_te).float().mean())
    assert start_acc > 0.8
    # with a vanishing learning rate, fine-tuning ends where it started
    kwargs = {"epochs": 1, "seed": 0, "device": "cpu", "batch_size": 16, "flip": False}
    assert finetune(encoder, x_tr, y_tr, x_te, y_te, 2, lr=1e-9, head_init="probe", **kwargs) == start_acc
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    with pytest.raises(ValueError, match="head_init"):
        finetune(encoder, x_tr, y_tr, x_te, y_te, 2, head_init="linear", **kwargs)


def _tiny_dataset(n: int, seed: int, labelled: bool = True) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    x = torch.rand(n, 1, 28, 28, generator=g) * 40
    for c in range(3):  # a bright horizontal band whose position is the class
        x[y == c, :, 4 + 8 * c : 10 + 8 * c, :] += 180
    labels = y if labelled else torch.full((n,), -1)
    return Dataset(
        images=x.clamp(0, 255).to(torch.uint8), labels=labels.long(), ids=np.arange(n).astype(str), classes=["top", "middle", "bottom"]
    )


def test_evaluate_all_keys_and_shapes():
    torch.manual_seed(0)
    encoder, random_encoder = build_backbone("small_cnn", 1, 8), build_backbone("small_cnn", 1, 8)
    train, test = _tiny_dataset(90, 0), _tiny_dataset(30, 1)
    train.labels[:5] = -1  # unlabelled rows are left out
    cfg = EvaluateConfig(knn_k=10, probe_epochs=5, finetune_epochs=1, label_fractions=[0.1, 0.5], embedding_points=20)
    seen = []
    result = evaluate_all(encoder, random_encoder, train, test, cfg, seed=0, device="cpu", progress=lambda name, value: seen.append(name))
    metrics = result["metrics"]
    expected = {
        "knn_acc",
        "linear_probe_acc",
        "finetune_10pct_acc",
        "finetune_50pct_acc",
        "raw_pixel_linear_probe_acc",
        "raw_pixel_knn_acc",
        "random_init_knn_acc",
        "random_init_linear_probe_acc",
        "supervised_10pct_acc",
        "supervised_50pct_acc",
    }
    assert set(metrics) == expected and set(seen) == expected
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["raw_pixel_knn_acc"] == 1.0 and metrics["raw_pixel_linear_probe_acc"] == 1.0
    assert result["predictions"].shape == (30,) and np.array_equal(result["test_labels"], test.labels.numpy())
    assert result["test_features"].shape == (20, encoder.out_dim) and result["test_labels_subset"].shape == (20,)

    # more labelled test rows than max_test_images: predictions and their labels are of the same subset
    capped = evaluate_all(encoder, random_encoder, train, test, cfg.model_copy(update={"max_test_images": 21}), seed=0, device="cpu")
    pred, labels = capped["predictions"], capped["test_labels"]
    assert pred.shape == labels.shape == (21,)
    assert float((pred == labels).mean()) == pytest.approx(capped["metrics"]["linear_probe_acc"])

    with pytest.raises(DataError, match="evaluation needs labels"):
        evaluate_all(encoder, random_encoder, _tiny_dataset(30, 0, labelled=False), test, cfg, seed=0, device="cpu")
    with pytest.raises(DataError, match="evaluation needs labels"):
        evaluate_all(encoder, random_encoder, train, _tiny_dataset(30, 1, labelled=False), cfg, seed=0, device="cpu")


def test_extract_features_batches_and_keeps_mode():
    torch.manual_seed(0)
    encoder = build_backbone("small_cnn", 1, 8).train()
    x = _tiny_dataset(10, 0).images
    f = extract_features(encoder, x, "cpu", batch_size=3)
    assert f.shape == (10, encoder.out_dim) and f.dtype == torch.float32
    assert torch.allclose(f, extract_features(encoder, x, "cpu", batch_size=100), atol=1e-5)
    assert encoder.training


def test_plots_write_pngs(tmp_path):
    from ssl_components import plots

    png = b"\x89PNG"
    out = plots.loss_curve([{"epoch": i, "loss": 5 - i * 0.3, "lr": 1e-3 * (i + 1)} for i in range(1, 6)], tmp_path / "loss.png")
    assert out.read_bytes()[:4] == png
    y_true = np.arange(60) % 3
    out = plots.confusion_matrix(y_true, (y_true + (np.arange(60) % 7 == 0)) % 3, ["a", "b", "c"], tmp_path / "cm.png")
    assert out.read_bytes()[:4] == png
    feats = np.random.default_rng(0).normal(size=(60, 70)) + y_true[:, None] * 3
    out = plots.embedding_map(feats, y_true, ["a", "b", "c"], tmp_path / "emb.png", seed=0)
    assert out.read_bytes()[:4] == png
    metrics = {
        "knn_acc": 0.8,
        "raw_pixel_knn_acc": 0.79,
        "random_init_knn_acc": 0.7,
        "linear_probe_acc": 0.85,
        "raw_pixel_linear_probe_acc": 0.84,
        "random_init_linear_probe_acc": 0.8,
        "finetune_1pct_acc": 0.7,
        "supervised_1pct_acc": 0.6,
        "finetune_10pct_acc": 0.85,
        "supervised_10pct_acc": 0.8,
    }
    out = plots.accuracy_bars(metrics, tmp_path / "acc.png")
    assert out.read_bytes()[:4] == png and out.stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["acc.png", "cm.png", "emb.png", "loss.png"]  # no temp files left


def test_encoder_saved_before_pool_existed_loads_and_gets_a_matching_baseline(tmp_path):
    """A champion registered by an older version has no "pool" in its meta: it loads with the grids it was
    trained with (1x1 and 2x2), computes what it computed, and its random-init baseline has its shape."""
    from ssl_components.backbones import LEGACY_POOL, SmallCNN, load_encoder, save_encoder
    from ssl_components.evaluation import random_init_like

    torch.manual_seed(0)
    old = SmallCNN(1, 8, pool=LEGACY_POOL).eval()
    meta = {"backbone": "small_cnn", "width": 8, "in_channels": 1, "image_size": 16, "out_dim": old.out_dim, "method": "simclr"}
    save_encoder(old, meta, tmp_path / "encoder.pt")
    loaded = load_encoder(tmp_path / "encoder.pt")
    x = normalize(_bright_side_images(4, 0)[0])
    assert loaded.out_dim == old.out_dim == 2 * 8 * 5
    with torch.inference_mode():
        torch.testing.assert_close(loaded(x), old(x))
    assert random_init_like(loaded.meta, seed=0).out_dim == old.out_dim
    assert build_backbone("small_cnn", 1, 8).out_dim == 2 * 8 * (1 + 4 + 16)  # today's default grids: 1, 2 and 4


@pytest.mark.parametrize("head_init", ["probe", "random"])
def test_probe_start_only_for_the_ssl_encoder_and_large_enough_label_sets(monkeypatch, head_init):
    """evaluate_all starts the SSL encoder's head from a probe only for subsets of at least
    finetune_probe_min_images images, and never for the supervised baseline (the calls it makes are recorded); every
    call gets the configured mixup and flip settings."""
    import ssl_components.evaluation as evaluation

    calls, settings = [], []
    real = evaluation.finetune

    def recording(encoder, train_images, *args, **kwargs):
        calls.append((encoder, len(train_images), kwargs["head_init"]))
        settings.append((kwargs["mixup"], kwargs["flip"], kwargs["flip_tta"], kwargs["min_steps"]))
        return real(encoder, train_images, *args, **kwargs)

    monkeypatch.setattr(evaluation, "finetune", recording)
    torch.manual_seed(0)
    encoder, random_encoder = build_backbone("small_cnn", 1, 8), build_backbone("small_cnn", 1, 8)
    train, test = _tiny_dataset(90, 0), _tiny_dataset(30, 1)
    cfg = EvaluateConfig(
        knn_k=10, probe_epochs=5, finetune_epochs=1, finetune_min_steps=0, label_fractions=[0.1, 0.5],
        finetune_head_init=head_init, finetune_probe_min_images=40, embedding_points=20, finetune_mixup=0.3, finetune_flip=False,
    )  # fmt: skip
    evaluate_all(encoder, random_encoder, train, test, cfg, seed=0, device="cpu")
    ssl_probe = "probe" if head_init == "probe" else "random"
    assert calls == [
        (encoder, 9, "random"),  # 10% of 90: below 40 images
        (random_encoder, 9, "random"),
        (encoder, 45, ssl_probe),  # 50%: at least 40 images
        (random_encoder, 45, "random"),  # the baseline never starts from a probe
    ]
    assert settings == [(0.3, False, False, 0)] * 4
