"""Watching pretraining: a cheap kNN accuracy of the current encoder, and early stopping on it.

The monitor set is a fixed, class-stratified, seeded subset of about `pretrain.monitor_images` labelled TRAIN
images (the test split is never seen during training), split per class into a kNN bank (half, rounded) and
queries (the rest). A check extracts the backbone's features of both, as evaluation does (eval mode,
no gradients; the train/eval mode is restored), and scores the queries with evaluation's weighted kNN
(cosine of standardised features, vote weight exp(sim / 0.1), `pretrain.monitor_knn_k` neighbours). It works for every method, since it
uses only the backbone. A check draws no random numbers from the training stream (it runs inside a forked RNG),
so a monitored run has exactly the losses of an unmonitored one. Labels reach only this module, never a loss.

Early stopping (`pretrain.early_stop_patience` N > 0) stops after N consecutive checks without a strictly
higher accuracy than the best so far, and the encoder kept is the best-monitored one (the earliest on ties).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ssl_components.data.store import Images
from ssl_components.evaluation import extract_features, knn_accuracy, stratified_subset

MONITOR_KNN_T = 0.1  # the monitor's vote temperature (the common protocol's; its bank is small, 1,000 images)


def monitor_split(labels: torch.Tensor, images: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bank, queries): sorted indices into `labels` of a stratified, seeded subset of about `images` labelled rows
    (unlabelled rows, label < 0, are never chosen), split per class into half (rounded, at least 1) for the bank
    and the rest for the queries. Both are empty when there are fewer than 2 labelled rows."""
    labels = torch.as_tensor(labels).cpu().long()
    labelled = int((labels >= 0).sum())
    empty = torch.zeros(0, dtype=torch.long)
    if labelled < 2:
        return empty, empty
    subset = stratified_subset(labels, min(1.0, images / labelled), seed)
    in_bank = torch.zeros(len(subset), dtype=torch.bool)
    in_bank[stratified_subset(labels[subset], 0.5, seed + 1)] = True
    return subset[in_bank], subset[~in_bank]


class KnnMonitor:
    """kNN accuracy of an encoder's features on a fixed bank / query split of labelled train images."""

    def __init__(self, images: Images, labels: torch.Tensor, size: int, k: int, seed: int, device: torch.device | str = "cpu"):
        if len(images) != len(labels):
            raise ValueError(f"monitor: {len(images)} images but {len(labels)} labels")
        bank, queries = monitor_split(labels, size, seed)
        labels = torch.as_tensor(labels).cpu().long()
        self.bank_size, self.query_size = len(bank), len(queries)
        self.images = images[torch.cat([bank, queries])].contiguous()  # uint8, bank rows first
        self.bank_y, self.query_y = labels[bank], labels[queries]
        self.num_classes = int(labels.max()) + 1 if len(labels) else 0
        self.k, self.device = k, torch.device(device)

    @property
    def usable(self) -> bool:
        """Whether there is at least one bank and one query image (there are none without labels)."""
        return self.bank_size > 0 and self.query_size > 0

    def __call__(self, encoder: nn.Module) -> float:
        """Weighted-kNN accuracy of the queries against the bank; the encoder's train/eval mode is unchanged and
        the global RNG state (CPU, and the monitor's GPU) is as before."""
        cuda = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            features = extract_features(encoder, self.images, self.device)
        bank, queries = features[: self.bank_size], features[self.bank_size :]
        return knn_accuracy(bank, self.bank_y, queries, self.query_y, self.k, MONITOR_KNN_T, self.num_classes)


@dataclass
class EarlyStopping:
    """Patience counted in monitor checks. `state()` goes into the checkpoint, so a resumed run stops where an
    uninterrupted one would. With `patience` 0 it only tracks the best value and never stops."""

    patience: int
    best: float = -math.inf
    best_epoch: int = 0  # 1-based epoch of the best check; 0 before the first check
    checks_without_improvement: int = 0
    stopped_epoch: int = 0  # 1-based epoch after which training stopped; 0 while it has not

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch > 0

    def update(self, epoch: int, value: float) -> bool:
        """Record the check of (1-based) `epoch`; returns whether it is a new best. Sets `stopped_epoch` when the
        patience has run out."""
        if value > self.best:
            self.best, self.best_epoch, self.checks_without_improvement = value, epoch, 0
            return True
        self.checks_without_improvement += 1
        if self.patience and self.checks_without_improvement >= self.patience:
            self.stopped_epoch = epoch
        return False

    def reason(self) -> str:
        return (
            f"early stop after epoch {self.stopped_epoch}: the kNN monitor accuracy has not improved for "
            f"{self.checks_without_improvement} checks (pretrain.early_stop_patience={self.patience}); "
            f"best {self.best:.4f} at epoch {self.best_epoch}"
        )

    def state(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> EarlyStopping:
        return cls(**state)
