"""The validated dataset: manifest + decoded store, minus what validate quarantined."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_components.data.store import Images, StoredImages
from ssl_components.errors import DataError
from ssl_components.io import read_json, sha256_file
from ssl_components.layout import CLASSES, MANIFEST, QUARANTINE, STORE  # noqa: F401  (re-exported for data modules)


@dataclass
class Dataset:
    images: Images  # (N, C, H, W) uint8; from load_dataset: rows of the store, read from disk when indexed
    labels: torch.Tensor  # (N,) int64, -1 where unlabeled
    ids: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labeled(self) -> torch.Tensor:
        return self.labels >= 0


def read_manifest(data_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """The manifest (one row per image, in store order); `columns`: only these (a manifest of 400k images is
    ~200 MB as a whole DataFrame, its id, split and label columns a fraction of it)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found; run the ingest stage first (`sslpipe stage ingest`)")
    return pd.read_parquet(path, columns=columns)


def quarantined_ids(data_dir: str | Path) -> set[str]:
    path = Path(data_dir) / QUARANTINE
    if not path.is_file():
        raise DataError(
            f"{path} not found: the data has not passed validation; run `sslpipe stage validate` (it writes this file only "
            "when the data passes) and fix what reports/validation.md lists"
        )
    return set(pd.read_csv(path, dtype={"id": str}, keep_default_na=False)["id"])


def data_version(data_dir: str | Path) -> str:
    """The data version: sha256 of the manifest (which holds every image's sha256)."""
    return sha256_file(Path(data_dir) / MANIFEST)


def load_dataset(data_dir: str | Path, split: str, exclude_quarantined: bool = True) -> Dataset:
    """A split of the validated data. Its images stay on disk: `images[index]` reads just those rows, so no stage
    holds a whole split in memory (labels and ids, a few bytes per image, are loaded)."""
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir, ["id", "split", "label"])
    keep = manifest["split"] == split
    if exclude_quarantined:
        keep &= ~manifest["id"].isin(quarantined_ids(data_dir))
    store = StoredImages(data_dir / STORE)
    if len(store) != len(manifest):
        raise DataError(f"{data_dir / STORE} has {len(store)} images but the manifest {len(manifest)}; re-run ingest")
    index = np.flatnonzero(keep.to_numpy())
    labels = np.array(manifest["label"].iloc[index].fillna(-1), dtype=np.int64)
    classes = read_json(data_dir / CLASSES)["classes"] if (data_dir / CLASSES).is_file() else []
    return Dataset(
        images=store.take(index),
        labels=torch.from_numpy(labels),
        ids=manifest["id"].iloc[index].to_numpy(),
        classes=classes,
    )
