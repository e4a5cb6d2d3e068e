"""Frozen-encoder and low-label evaluation, with the baselines measured the same way in the same run.

- kNN: weighted k-nearest neighbours by cosine similarity (weights exp(sim / t)), as in the InstDisc / DINO
  evaluation protocol, on features standardised with the bank's statistics (`evaluate.knn_standardize`); chunked
  over test rows so memory stays bounded.
- linear probe: one nn.Linear on standardised frozen features (AdamW, cosine schedule, cross-entropy).
- fine-tune: a copy of the encoder plus a linear head (random, or started from a linear probe of the frozen
  features: LP-FT) trained end-to-end on a stratified label subset, with mixup; a test image's prediction averages
  it and its mirror image.

Baselines: raw pixels (kNN, linear probe), a random-init encoder of the same architecture (kNN, linear
probe) and supervised-from-scratch training (`finetune` of the random-init encoder on the same subset with
the same epochs). Everything is deterministic from a seed and batched; no Prefect or MLflow here.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, SupportsInt, cast

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssl_components import metrics as metric_names
from ssl_components.backbones import LEGACY_POOL, build_backbone, load_encoder, normalize
from ssl_components.config import EvaluateConfig
from ssl_components.data.dataset import Dataset
from ssl_components.data.store import Images, take_rows
from ssl_components.errors import DataError
from ssl_components.metrics import fraction_tag  # noqa: F401  (re-exported: the tag in finetune_<tag>_acc)

log = logging.getLogger(__name__)

# Similarity-matrix budget for kNN (elements per test chunk): 16M floats = 64 MB.
_KNN_CHUNK_ELEMENTS = 1 << 24


def _device(device) -> torch.device:
    return torch.device(device) if not isinstance(device, torch.device) else device


@contextlib.contextmanager
def _single_thread(device: torch.device) -> Iterator[None]:
    """Run many tiny CPU ops on one thread: for a (1024 x D) @ (D x 10) step, a second thread only adds
    synchronisation, and on a busy 2-core machine it makes each step ~15x slower (measured)."""
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------- features
_INFERENCE_PIXELS = 1024 * 28 * 28  # pixels per inference batch: 1,024 images of 28x28, 196 of 64x64


def inference_batch(images: Images) -> int:
    """Images per inference batch: a fixed number of pixels, so activations (the first conv's output is
    width x pixels floats) take the same memory whatever the image size."""
    h, w = images.shape[-2:]
    return max(1, _INFERENCE_PIXELS // (h * w))


def extract_features(encoder: nn.Module, images_uint8: Images, device="cpu", batch_size: int | None = None) -> torch.Tensor:
    """Features (N, D) float32 on the CPU of uint8 images (N, C, H, W; read batch by batch), encoder in eval mode,
    `batch_size` images at a time (default: `inference_batch`).

    The encoder is moved to `device` and its train/eval mode is restored afterwards."""
    device = _device(device)
    batch_size = batch_size or inference_batch(images_uint8)
    was_training = encoder.training
    encoder.eval()
    encoder.to(device)
    out = torch.zeros(0, int(getattr(encoder, "out_dim", 0)))
    try:
        for start in range(0, len(images_uint8), batch_size):
            with torch.inference_mode():
                f = encoder(normalize(images_uint8[start : start + batch_size].to(device))).float().cpu()
            if start == 0:  # filled in place: no list of batches plus their concatenation (twice the features)
                out = torch.empty(len(images_uint8), f.shape[1])
            out[start : start + len(f)] = f
    finally:
        encoder.train(was_training)
    return out


RAW_PIXEL_MAX_VALUES = 1024  # the raw-pixel baseline's feature size bound (Fashion-MNIST's 784 pixels are kept as they are)


def raw_pixel_features(images_uint8: Images, batch_size: int = 4096) -> torch.Tensor:
    """The raw-pixel baseline's 'features': pixels in [0, 1], flattened (kNN uses their cosine similarity; the linear
    probe standardises them, so the scale does not matter there). Images with more than RAW_PIXEL_MAX_VALUES values
    are area-averaged to the largest square size within it first (64x64 RGB -> 18x18 RGB), so the baseline's
    memory is bounded like the encoders' features."""
    n, c, h, w = images_uint8.shape
    side = min(h, w, math.isqrt(RAW_PIXEL_MAX_VALUES // c))
    out = torch.empty(n, c * side * side)
    for start in range(0, n, batch_size):
        x = images_uint8[start : start + batch_size].float() / 255.0
        if (side, side) != (h, w):
            x = F.adaptive_avg_pool2d(x, side)
        out[start : start + len(x)] = x.reshape(len(x), -1)
    return out


# -------------------------------------------------------------------------------------------------- kNN
def knn_predict(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    k: int = 200,
    t: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    standardize: bool = True,
) -> torch.Tensor:
    """Weighted kNN class predictions for test rows (cosine similarity, vote weight exp(sim / t)).

    `standardize`: each feature is z-scored with the bank's (train rows') mean and std before the cosine, so
    every dimension counts by its spread, not its scale (a pooled readout concatenates maps of different
    magnitudes); computed without a standardised copy of the bank. False: plain cosine (the DINO protocol)."""
    if len(train_f) == 0:
        raise DataError("evaluation needs labels: kNN has no labelled training features")
    num_classes = int(num_classes if num_classes is not None else int(train_y.max()) + 1)
    k = min(int(k), len(train_f))
    train_f = train_f.float()
    dev = train_f.device
    if standardize:
        mean, std = _column_stats(train_f)
        mean, scale = mean.to(dev), 1.0 / std.to(dev)
    else:
        mean, scale = torch.zeros(1, train_f.shape[1], device=dev), torch.ones(1, train_f.shape[1], device=dev)
    # norms of the bank's standardised rows, a chunk at a time
    norms = torch.cat([((train_f[s : s + 8192] - mean) * scale).norm(dim=1) for s in range(0, len(train_f), 8192)])
    inv_norm = 1.0 / norms.clamp_min(1e-12)
    train_y = train_y.to(dev).long()
    if chunk_size is None:
        chunk_size = max(1, _KNN_CHUNK_ELEMENTS // max(1, len(train_f)))
    preds = []
    for start in range(0, len(test_f), chunk_size):
        q = F.normalize((test_f[start : start + chunk_size].float().to(dev) - mean) * scale, dim=1)
        w = q * scale  # q . ((b - mean) * scale) == (q * scale) . b - (q * scale) . mean
        sim = (w @ train_f.T).sub_(w @ mean.T).mul_(inv_norm)  # (c, N_train)
        top_sim, top_idx = sim.topk(k, dim=1)  # (c, k)
        del sim
        # exp((sim - row max) / t): the same votes up to a per-row factor, with no overflow at a small t
        weights = ((top_sim - top_sim[:, :1]) / t).exp()
        votes = torch.zeros(len(q), num_classes, device=q.device, dtype=weights.dtype)
        votes.scatter_add_(1, train_y[top_idx], weights)
        preds.append(votes.argmax(1).cpu())
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def knn_accuracy(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    test_f: torch.Tensor,
    test_y: torch.Tensor,
    k: int = 200,
    t: float = 0.1,
    num_classes: int | None = None,
    chunk_size: int | None = None,
    standardize: bool = True,
) -> float:
    """Accuracy of weighted kNN (InstDisc / DINO protocol, features standardised unless `standardize=False`).
    `num_classes` defaults to max(train label) + 1."""
    if len(test_f) == 0:
        raise DataError("evaluation needs labels: kNN has no labelled test features")
    pred = knn_predict(train_f, train_y, test_f, k, t, num_classes, chunk_size, standardize)
    return float((pred == test_y.cpu().long()).float().mean())


# ---------------------------------------------------------------------------------------- linear probe
def fit_linear(
    train_f: torch.Tensor,
    train_y: torch.Tensor,
    num_classes: int,
    epochs: int = 30,
    lr: float = 0.01,
    seed: int = 0,
    device="cpu",
    batch_size: int = 1024,
    weight_decay: float = 1e-4,
    min_steps: int = 300,
) -> nn.Linear:
    """One nn.Linear trained on standardised frozen features, returned acting on the raw features (the
    standardisation folded into its weights), on the CPU.

    Minibatch AdamW with a cosine schedule; at least `min_steps` steps, so a tiny labelled set still gets a
    converged probe. Deterministic from `seed`.
    """
    device = _device(device)
    if len(train_f) == 0:
        raise DataError("evaluation needs labels: the linear probe got no labelled train features")
    mean, std = _column_stats(train_f)
    # standardised batch by batch: no second copy of the features
    xtr, ytr, mean_d, std_d = train_f.float().to(device), train_y.long().to(device), mean.to(device), std.to(device)
    n = len(xtr)
    batches = max(1, math.ceil(n / batch_size))
    epochs = max(int(epochs), math.ceil(min_steps / batches))
    total = epochs * batches

    gen = torch.Generator().manual_seed(seed)
    head = nn.Linear(xtr.shape[1], num_classes).to(device)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    with _single_thread(device):
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(device)
            for idx in torch.tensor_split(perm, batches):
                loss = F.cross_entropy(head((xtr[idx] - mean_d) / std_d), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    out = nn.Linear(xtr.shape[1], num_classes)
    with torch.no_grad():
        weight = head.weight.detach().cpu() / std  # W (x - m) / s + b = (W / s) x + (b - (W / s) m)
        out.weight.copy_(weight)
        out.bias.copy_(head.bias.detach().cpu() - (weight * mean).sum(1))
    return out


def _column_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-column mean and (unbiased) std of x (N, D) as (1, D) float32, summed chunk by chunk in float64 (no
    full-size temporary), for standardising: std is 1 for a single row and for constant columns (std < 1e-6, e.g.
    blank border pixels), which then stay constant instead of being divided by ~0."""
    total = torch.zeros(1, x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].double().cpu()
        total += part.sum(0, keepdim=True)
        squares += (part * part).sum(0, keepdim=True)
    n = len(x)
    mean = total / n
    if n < 2:
        return mean.float(), torch.ones_like(mean, dtype=torch.float32)
    std = ((squares - n * mean * mean) / (n - 1)).clamp_min(0).sqrt().float()
    return mean.float(), torch.where(std < 1e-6, torch.ones_like(std), std)


def linear_probe(
    train_f: torch.Tensor, train_y: torch.Tensor, test_f: torch.Tensor, test_y: torch.Tensor, num_classes: int, *args: Any, **kwargs: Any
) -> tuple[float, torch.Tensor]:
    """`fit_linear(train_f, train_y, num_classes, *args, **kwargs)`; return (test accuracy, test predictions)."""
    if len(test_f) == 0:
        raise DataError("evaluation needs labels: the linear probe got no labelled test features")
    head = fit_linear(train_f, train_y, num_classes, *args, **kwargs)
    with torch.inference_mode():
        pred = torch.cat([head(test_f[s : s + 8192].float()).argmax(1) for s in range(0, len(test_f), 8192)])
    acc = float((pred == test_y.cpu().long()).float().mean())
    return acc, pred


# ------------------------------------------------------------------------------------------ label subsets
def stratified_subset(labels: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """Indices of a class-stratified subset: round(fraction * n_c) per class (at least 1), sorted.

    Unlabelled rows (label < 0) are never chosen. Deterministic from `seed`.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    labels = torch.as_tensor(labels).cpu().long()
    gen = torch.Generator().manual_seed(seed)
    chosen = []
    for c in torch.unique(labels[labels >= 0]).tolist():
        idx = torch.nonzero(labels == c).flatten()
        take = min(len(idx), max(1, int(math.floor(fraction * len(idx) + 0.5))))
        chosen.append(idx[torch.randperm(len(idx), generator=gen)[:take]])
    if not chosen:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat(chosen).sort().values


# ----------------------------------------------------------------------------------------------- fine-tune
def _augment(x: torch.Tensor, gen: torch.Generator, max_shift: int, flip: bool = True) -> torch.Tensor:
    """Per-sample random horizontal flip and random shift (replicate-pad then crop) of a float batch."""
    b, _, h, w = x.shape
    if flip:
        mask = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        x = torch.where(mask[:, None, None, None], x.flip(-1), x)
    if max_shift > 0:
        p = max_shift
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        dy = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=gen).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # (b, h, 1)
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # (b, 1, w)
        bi = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2).contiguous()
    return x


def _recalibrate_batchnorm(model: nn.Module, images: Images, device: torch.device, batch_size: int) -> None:
    """Re-estimate BatchNorm running statistics as exact averages over the (un-augmented) training images.

    After a few dozen steps (a 1% label subset) the exponential running averages still carry the
    initial or pretraining statistics, and eval-mode predictions can collapse while the training loss is low.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        for s in range(0, len(images), batch_size):
            model(normalize(images[s : s + batch_size].to(device)))
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum


def _probe_head(model: _Classifier, images: Images, labels: torch.Tensor, num_classes: int, seed: int, device, batch_size: int):
    """Start the head from a linear probe on the encoder's frozen features of the labelled images (LP-FT):
    the probe's standardisation is folded into the head, so it acts on the features as the classifier does."""
    feats = extract_features(nn.Sequential(model.encoder, model.norm), images, device, batch_size)
    probe = fit_linear(feats, labels, num_classes, seed=seed, device=device)
    with torch.no_grad():
        model.head.weight.copy_(probe.weight)
        model.head.bias.copy_(probe.bias)


class _Classifier(nn.Module):
    """encoder -> (BatchNorm without affine parameters: every feature standardised) -> linear head."""

    def __init__(self, encoder: nn.Module, num_classes: int, head_norm: bool = True):
        super().__init__()
        dim = int(cast(SupportsInt, encoder.out_dim))
        self.encoder = encoder
        self.norm = nn.BatchNorm1d(dim, affine=False) if head_norm else nn.Identity()
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.encoder(x)))


def finetune(
    encoder: nn.Module,
    train_images: Images,
    train_y: torch.Tensor,
    test_images: Images,
    test_y: torch.Tensor,
    num_classes: int,
    epochs: int = 15,
    lr: float = 1e-3,
    seed: int = 0,
    device="cpu",
    batch_size: int = 256,
    weight_decay: float = 1e-4,
    max_shift: int = 2,
    flip: bool = True,
    min_steps: int = 0,
    desc: str = "fine-tune",
    label_smoothing: float = 0.0,
    head_init: str = "random",
    backbone_lr_scale: float = 1.0,
    head_norm: bool = True,
    mixup: float = 0.0,
    flip_tta: bool = False,
) -> float:
    """Train a copy of `encoder` plus a linear head end-to-end on labelled uint8 images; return test accuracy.

    The caller's encoder is never modified (it is deep-copied). Light per-sample augmentation (flip, shift
    up to `max_shift` pixels; `flip=False` where left/right carries the label), AdamW, cosine schedule; then
    BatchNorm statistics are re-estimated on the training images before testing. `flip_tta`: a test image's
    class probabilities are averaged with its mirror image's (for data whose labels do not change with a flip).
    `mixup` > 0: each batch is mixed with a shuffled copy of itself, x = lam * x + (1 - lam) * x[perm], the loss
    mixed the same way, lam ~ Beta(mixup, mixup) per batch (Zhang et al. 2018). With a random-init encoder this
    is the supervised-from-scratch baseline, trained exactly the same way. `min_steps` raises the number of epochs so
    a small subset still gets that many optimiser steps (1% of Fashion-MNIST is 3 steps an epoch).

    `head_init="probe"` starts the head from a linear probe of the frozen encoder on the same labelled images
    (LP-FT: the encoder's features are not disturbed by the gradients of a random head); `label_smoothing` and
    `backbone_lr_scale` (the encoder's learning rate relative to the head's) are recipe options measured in
    benchmarks/finetune_recipes.py. `head_norm` puts a BatchNorm without affine parameters between encoder and
    head, so the head sees every feature standardised (a pooled readout concatenates maps of different
    magnitudes); on a validation part of train it gained 0.6 points at 600 labels, for the SSL encoder and the
    baseline alike (docs/benchmarks.md).
    """
    device = _device(device)
    n = len(train_images)
    if n == 0 or len(test_images) == 0:
        raise DataError("evaluation needs labels: fine-tuning got no labelled train or test images")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _Classifier(copy.deepcopy(encoder), num_classes, head_norm).to(device)
    if head_init == "probe":
        # features as the classifier will see them: BatchNorm statistics of these images, as after training
        _recalibrate_batchnorm(model, train_images, device, batch_size)
        _probe_head(model, train_images, train_y, num_classes, seed, device, batch_size)
    elif head_init != "random":
        raise ValueError(f"head_init must be 'random' or 'probe', got {head_init!r}")
    gen = torch.Generator().manual_seed(seed)
    mix_rng = np.random.default_rng(seed)  # Beta draws (torch's Beta has no generator argument)
    # Balanced batches (tensor_split): no tiny last batch with poor BatchNorm statistics.
    batches = max(1, math.ceil(n / batch_size))
    if n >= 2:
        batches = min(batches, n // 2)
    epochs = max(int(epochs), math.ceil(min_steps / batches))
    total = epochs * batches
    groups = [
        {"params": model.encoder.parameters(), "lr": lr * backbone_lr_scale},
        {"params": model.head.parameters(), "lr": lr},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    ytr = train_y.long()
    model.train()
    bar = tqdm(range(epochs), desc=desc, leave=False)
    for _ in bar:
        perm = torch.randperm(n, generator=gen)
        for idx in torch.tensor_split(perm, batches):
            x, y = _augment(normalize(train_images[idx].to(device)), gen, max_shift, flip), ytr[idx].to(device)
            if mixup > 0:
                lam, perm_b = float(mix_rng.beta(mixup, mixup)), torch.randperm(len(idx), generator=gen).to(device)
                logits = model(lam * x + (1 - lam) * x[perm_b])
                loss = lam * F.cross_entropy(logits, y, label_smoothing=label_smoothing) + (1 - lam) * F.cross_entropy(
                    logits, y[perm_b], label_smoothing=label_smoothing
                )
            else:
                loss = F.cross_entropy(model(x), y, label_smoothing=label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    _recalibrate_batchnorm(model, train_images, device, batch_size)
    model.eval()
    correct = 0
    step = inference_batch(test_images)
    with torch.inference_mode():
        for s in range(0, len(test_images), step):
            x = normalize(test_images[s : s + step].to(device))
            prob = model(x).softmax(1)
            if flip_tta:
                prob += model(x.flip(-1)).softmax(1)
            pred = prob.argmax(1).cpu()
            correct += int((pred == test_y[s : s + step].long().cpu()).sum())
    return correct / len(test_images)


def finetune_settings(cfg: EvaluateConfig) -> dict[str, Any]:
    """`finetune` keyword arguments from the evaluate settings, as the evaluate stage and the registry gate use them
    (the head's start is chosen per label subset by `_Labelled.finetune`)."""
    return {
        "epochs": cfg.finetune_epochs,
        "lr": cfg.finetune_lr,
        "min_steps": cfg.finetune_min_steps,
        "flip": cfg.finetune_flip,
        "flip_tta": cfg.finetune_flip,
        "mixup": cfg.finetune_mixup,
    }


# ------------------------------------------------------------------------------------------------- all
def _at_most(labels: torch.Tensor, most: int, seed: int) -> torch.Tensor:
    """Indices of at most `most` of these labelled rows: all of them, or a stratified, seeded subset."""
    return torch.arange(len(labels)) if len(labels) <= most else stratified_subset(labels, most / len(labels), seed)


@dataclass
class _Labelled:
    """The labelled rows of train and test, as the evaluation uses them (images stay where they are: on disk for
    a loaded split). `feat` picks the train rows whose frozen features kNN and the linear probe use."""

    xtr: Images
    ytr: torch.Tensor
    xte: Images
    yte: torch.Tensor
    num_classes: int
    feat: torch.Tensor

    @classmethod
    def of(cls, train: Dataset, test: Dataset, cfg: EvaluateConfig, seed: int) -> _Labelled:
        tr_mask, te_mask = train.labels >= 0, test.labels >= 0
        if not bool(tr_mask.any()) or not bool(te_mask.any()):
            raise DataError(
                f"evaluation needs labels: {int(tr_mask.sum())} labelled train and {int(te_mask.sum())} labelled test "
                "images; ingest a labelled source (class folders or a manifest with a label column)"
            )
        ytr, yte = train.labels[tr_mask], test.labels[te_mask]
        num_classes = max(len(train.classes or []), int(ytr.max()) + 1, int(yte.max()) + 1)
        xtr, xte = take_rows(train.images, tr_mask.nonzero().squeeze(1)), take_rows(test.images, te_mask.nonzero().squeeze(1))
        if len(yte) > cfg.max_test_images:
            keep = _at_most(yte, cfg.max_test_images, seed)
            xte, yte = take_rows(xte, keep), yte[keep]
        feat = _at_most(ytr, cfg.max_feature_images, seed)
        log.info(
            "evaluate: %d labelled train images (%d for frozen features), %d labelled test images, %d classes",
            len(ytr),
            len(feat),
            len(yte),
            num_classes,
        )
        return cls(xtr, ytr, xte, yte, num_classes, feat)

    def features(self, encoder: nn.Module | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(train, test) frozen features of `encoder` (None: raw pixels) for kNN and the linear probe."""
        xtr = take_rows(self.xtr, self.feat)
        if encoder is None:
            return raw_pixel_features(xtr), raw_pixel_features(self.xte)
        return extract_features(encoder, xtr, device), extract_features(encoder, self.xte, device)

    def frozen(self, ftr: torch.Tensor, fte: torch.Tensor, cfg: EvaluateConfig, seed: int, device) -> tuple[float, float, torch.Tensor]:
        """(kNN accuracy, linear-probe accuracy, linear-probe test predictions) of frozen features."""
        ytr = self.ytr[self.feat]
        knn = knn_accuracy(ftr, ytr, fte, self.yte, cfg.knn_k, cfg.knn_t, self.num_classes, standardize=cfg.knn_standardize)
        probe, pred = linear_probe(ftr, ytr, fte, self.yte, self.num_classes, cfg.probe_epochs, cfg.probe_lr, seed, device)
        return knn, probe, pred

    def finetune(
        self, encoder: nn.Module, fraction: float, cfg: EvaluateConfig, seed: int, device, desc: str, pretrained: bool = True
    ) -> float:
        """Fine-tuning accuracy with a stratified `fraction` of the train labels (the same subset for every encoder).

        A pretrained encoder's head starts as `evaluate.finetune_head_init` says when the subset has at least
        `evaluate.finetune_probe_min_images` images. The default is a random head at every size: with mixup it beat
        the probe start (LP-FT) at 6,000 labels on a validation part of train (89.49 vs 89.17 without mixup, 88.04
        with it), and at 600 the probe already fits the few labels. A random-init encoder (the supervised
        baseline) always starts from a random head: a probe of random features is no head start, and it cost that
        baseline points at both sizes (docs/benchmarks.md)."""
        idx = stratified_subset(self.ytr, fraction, seed)
        probe = pretrained and cfg.finetune_head_init == "probe" and len(idx) >= cfg.finetune_probe_min_images
        return finetune(
            encoder,
            take_rows(self.xtr, idx),
            self.ytr[idx],
            self.xte,
            self.yte,
            self.num_classes,
            seed=seed,
            device=device,
            desc=desc,
            head_init="probe" if probe else "random",
            **finetune_settings(cfg),
        )


def score_encoder(
    encoder: nn.Module, train: Dataset, test: Dataset, cfg: EvaluateConfig, names: list[str], seed: int = 0, device="cpu"
) -> dict[str, float]:
    """Some of the SSL encoder's own metrics (`ssl_components.metrics` names), computed exactly as `evaluate_all`
    computes them: the registry gate scores the champion with this on the current data."""
    device = _device(device)
    data = _Labelled.of(train, test, cfg, seed)
    out: dict[str, float] = {}
    if set(names) & set(metric_names.FROZEN):
        knn, probe, _ = data.frozen(*data.features(encoder, device), cfg, seed, device)
        out.update({metric_names.KNN: knn, metric_names.LINEAR_PROBE: probe})
    for fraction in cfg.label_fractions:
        name = metric_names.finetune(fraction)
        if name in names:
            out[name] = data.finetune(encoder, fraction, cfg, seed, device, desc=name)
    missing = [n for n in names if n not in out]
    if missing:
        raise ValueError(f"cannot score {missing}: not metrics of the encoder under these evaluate settings")
    return {n: out[n] for n in names}


def evaluate_all(
    encoder: nn.Module,
    random_encoder: nn.Module | None,
    train: Dataset,
    test: Dataset,
    cfg: EvaluateConfig,
    seed: int = 0,
    device="cpu",
    progress: Callable[[str, float], None] | None = None,
) -> dict:
    """Every metric of the evaluate stage, SSL encoder and baselines side by side, on labelled rows only.
    `random_encoder` None: the SSL encoder's metrics only, no baselines (`sslpipe compare` measures them once per
    backbone).

    Returns {"metrics": flat dict of accuracies (names from ssl_components.metrics), "predictions": linear-probe
    predictions for the labelled test rows measured (numpy, in order; a subset when there are more than
    cfg.max_test_images), "test_labels": those rows' labels (numpy), "test_features": SSL features of up to
    cfg.embedding_points labelled test images (numpy), "test_labels_subset": their labels (numpy)}.
    `progress(name, value)` is called after each metric.
    """
    device = _device(device)
    data = _Labelled.of(train, test, cfg, seed)

    metrics: dict[str, float] = {}

    def record(name: str, value: float) -> None:
        metrics[name] = float(value)
        log.info("evaluate: %s = %.4f", name, value)
        if progress is not None:
            progress(name, float(value))

    def frozen(prefix: str, ftr: torch.Tensor, fte: torch.Tensor) -> torch.Tensor:
        knn, probe, pred = data.frozen(ftr, fte, cfg, seed, device)
        record(prefix + metric_names.KNN, knn)
        record(prefix + metric_names.LINEAR_PROBE, probe)
        return pred

    # SSL encoder, frozen
    ftr, fte = data.features(encoder, device)
    predictions = frozen("", ftr, fte)
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(data.yte), generator=gen)[: cfg.embedding_points].sort().values
    test_features, test_labels_subset = fte[keep].numpy(), data.yte[keep].numpy()
    del ftr, fte

    # baselines, frozen: raw pixels and a random-init encoder of the same architecture
    if random_encoder is not None:
        frozen(metric_names.RAW_PIXELS, *data.features(None, device))
        frozen(metric_names.RANDOM_INIT, *data.features(random_encoder, device))

    # low-label fine-tuning vs supervised from scratch on the same subset, same schedule
    for fraction in cfg.label_fractions:
        tuned = [(metric_names.finetune(fraction), encoder)]
        if random_encoder is not None:
            tuned.append((metric_names.supervised(fraction), random_encoder))
        for name, enc in tuned:
            record(name, data.finetune(enc, fraction, cfg, seed, device, desc=name.removesuffix("_acc"), pretrained=enc is encoder))

    return {
        "metrics": metrics,
        "predictions": predictions.numpy(),
        "test_labels": data.yte.numpy(),
        "test_features": test_features,
        "test_labels_subset": test_labels_subset,
    }


def random_init_like(meta: dict[str, Any], seed: int) -> nn.Module:
    """A random-init encoder of the same architecture, initialised from `seed` (the same baseline in every run)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_backbone(meta["backbone"], meta["in_channels"], meta["width"], meta.get("pool", LEGACY_POOL))


def evaluate_saved_encoder(
    path, train: Dataset, test: Dataset, cfg: EvaluateConfig, seed: int = 0, device="cpu", baselines: bool = True
) -> dict:
    """`evaluate_all` for an encoder file written by `save_encoder`, beside a random-init encoder of the same
    architecture (`baselines=False`: without baselines)."""
    encoder = load_encoder(path)
    meta = cast(dict[str, Any], encoder.meta)  # set by load_encoder
    return evaluate_all(encoder, random_init_like(meta, seed) if baselines else None, train, test, cfg, seed, device)
