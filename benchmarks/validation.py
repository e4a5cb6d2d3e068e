"""The validation part of train that benchmark scripts tune on (the test split is never read).

Shared by finetune_recipes.py and pool_readout.py, so both choose on the same held-out images.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ssl_components.data.dataset import load_dataset
from ssl_components.evaluation import stratified_subset

SEED = 12345  # the held-out images' draw; not any run's seed


def labelled_train_split(data: Path, val_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images, labels, val_idx, rest_idx) of the labelled train split of `data`: `val_images` stratified images
    held out for validation, the rest for training (kNN bank, probe, label subsets)."""
    train = load_dataset(data, "train")
    keep = train.labels >= 0
    images, labels = train.images[keep], train.labels[keep]
    val_idx = stratified_subset(labels, val_images / len(labels), seed=SEED)
    rest = torch.ones(len(labels), dtype=torch.bool)
    rest[val_idx] = False
    return images, labels, val_idx, torch.nonzero(rest).flatten()
