"""Shared checks for the SSL-method tests: synthetic bar images, a short pretraining run, kNN against the
random-init encoder, and save -> resume equivalence.

Import from a test module with `from methodkit import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import json

import pytest
import torch

from ssl_components.backbones import load_encoder
from ssl_components.config import build_config
from ssl_components.evaluation import extract_features, knn_accuracy
from ssl_components.methods import build_method
from ssl_components.training import CHECKPOINT, pretrain
from ssl_components.views import ViewProvider

SIZE = 16
BASE = [
    "cache_views.mode=online",
    "pretrain.width=8",
    "pretrain.batch_size=32",
    "pretrain.proj_hidden=32",
    "pretrain.proj_dim=16",
    "pretrain.pred_hidden=16",
    "pretrain.num_threads=1",
    # 16x16 images leave a 4x4 map: the default 4x4 grid would hand even a random-init encoder the whole map,
    # whose kNN on these synthetic layouts is then near the trained one's; the tests measure the method, not the readout
    "pretrain.pool=[1,2]",
]  # tiny convolutions: a second thread only adds waiting on a shared 2-core machine
# 40 epochs of 4 steps: at 4-6 epochs (16-24 steps) no method (SimCLR included) reliably beats the random-init
# encoder in kNN yet; a 40-epoch run of this tiny CNN on 128 images still takes only a second or two.
EPOCHS = 40


def bar_images(n: int = 128, seed: int = 0, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, 16, 16) images of one bright bar on black, and labels: the class is the bar's orientation
    (0 horizontal, 1 vertical, 2 diagonal, either way). Position, length (10-16 px) and brightness are random.

    The default augmentations keep the class (a horizontal flip maps one diagonal onto the other, hence one
    diagonal class) while changing position, scale and brightness: the nuisances a random encoder's features
    mix with orientation, and the ones an SSL method learns to ignore.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, SIZE, SIZE, dtype=torch.uint8)
    y = torch.arange(n) % classes
    i = torch.arange(SIZE)
    for k in range(n):
        v, p, a, flip = (int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((150, 256), (2, 12), (0, 7), (0, 2)))
        b = int(torch.randint(a + 10, SIZE + 1, (1,), generator=g))
        if y[k] == 0:
            x[k, 0, p : p + 2, a:b] = v
        elif y[k] == 1:
            x[k, 0, a:b, p : p + 2] = v
        else:  # a diagonal band about 2 px wide, offset by p - 7 from the main (or anti-) diagonal
            d = (i[None, :] - i[:, None]) if flip else (i[None, :] + i[:, None] - SIZE + 1)
            x[k, 0][(d - (p - 7)).abs() < 1.5] = v
    return x, y


def settings(method: str, *overrides: str):
    return build_config({}, overrides=[*BASE, f"pretrain.method={method}", *overrides])


def train(tmp_path, name: str, method: str, images: torch.Tensor, overrides=(), **kw) -> dict:
    """A short `pretrain` run in online-view mode (seed 0); writes under tmp_path / name."""
    cfg = settings(method, *overrides)
    views = ViewProvider(cfg.cache_views, images, tmp_path / "views", 0, "methodkit")
    threads = torch.get_num_threads()  # pretrain sets pretrain.num_threads for the process; put it back
    try:
        return pretrain(cfg.pretrain, views, len(images), tuple(images.shape[1:]), tmp_path / name, seed=0, run_key="k", **kw)
    finally:
        torch.set_num_threads(threads)


def knn(encoder, labelled, test, k: int = 5) -> float:
    """kNN by plain cosine: the margins over random init below were set with it (on these 16x16 bar images,
    standardised features lift a random-init encoder's kNN to ~0.92 and leave too little room to tell)."""
    (train_x, train_y), (test_x, test_y) = labelled, test
    train_f, test_f = extract_features(encoder, train_x), extract_features(encoder, test_x)
    return knn_accuracy(train_f, train_y, test_f, test_y, k=k, standardize=False)


def check_step(method: str, cls: type) -> None:
    """The registry builds `cls` for `method`; one training step gives a finite loss with gradients for the
    backbone, and detached (B, proj_dim) embeddings of the first view."""
    cfg = settings(method).pretrain
    torch.manual_seed(0)
    m = build_method(cfg, 1)
    assert type(m) is cls and m.name == method and m.views == "pair"
    views = [torch.rand(8, 1, SIZE, SIZE) * 2 - 1 for _ in range(2)]
    loss, z = m.training_step(views)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert z.shape == (8, cfg.proj_dim) and not z.requires_grad
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.backbone.parameters())


def check_learns(tmp_path, method: str, overrides=(), epochs: int = EPOCHS, margin: float = 0.05, images=None, run=None) -> dict:
    """Pretrain on 128 unlabelled images (`images(n, seed)`, default: bar images); assert the loss falls, the
    embeddings do not collapse, and kNN accuracy (30 labelled images, 256 test images, k=5) beats the same
    encoder at its initial random weights by `margin`. Returns the numbers, for a failure message or a report.
    `run` trains instead of `train` (same arguments; the distributed tests run it under torchrun)."""
    images = images or bar_images
    opts = [f"pretrain.epochs={epochs}", *overrides]
    cfg = settings(method, *opts)
    torch.manual_seed(0)  # pretrain seeds the same way before it builds the method: the same initial weights
    initial = build_method(cfg.pretrain, 1).backbone
    (run or train)(tmp_path, "run", method, images(128, seed=0)[0], opts)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    trained = load_encoder(tmp_path / "run" / "encoder.pt")
    labelled, test = images(30, seed=1), images(256, seed=2)
    out = {
        "losses": [round(h["loss"], 4) for h in history],
        "std": history[-1]["embedding_std"],
        "knn_trained": knn(trained, labelled, test),
        "knn_random": knn(initial, labelled, test),
    }
    assert trained.meta["method"] == method
    assert out["losses"][-1] < out["losses"][0], out
    assert out["std"] > 100 * cfg.pretrain.collapse_std, out
    assert out["knn_trained"] > out["knn_random"] + margin, out
    return out


def check_resume(tmp_path, method: str, overrides=()) -> None:
    """2 epochs straight == 1 epoch, interrupted, then resumed: same per-epoch losses and final weights."""
    images, _ = bar_images(64, seed=2)
    opts = ["pretrain.epochs=2", *overrides]
    train(tmp_path, "straight", method, images, opts)

    def interrupt(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, "resumed", method, images, opts, on_epoch_end=interrupt)
    assert torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)["epoch"] == 0
    assert train(tmp_path, "resumed", method, images, opts)["resumed_from_epoch"] == 1

    a = torch.load(tmp_path / "straight" / CHECKPOINT, weights_only=True)
    b = torch.load(tmp_path / "resumed" / CHECKPOINT, weights_only=True)
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:  # whole method: backbone, heads and any buffers
        torch.testing.assert_close(a["model"][k], b["model"][k], msg=f"{method}: {k} differs after resume")
