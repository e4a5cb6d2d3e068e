"""Where images come from: Fashion-MNIST, an image folder, or a CSV/Parquet manifest.

Each source becomes one table with a row per image: `path`, `label_name` (None when unlabeled) and `split`
(None when the source has none). Fashion-MNIST also hands over its pixels, already decoded.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_components.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
SPLITS = ("train", "test")
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


@dataclass
class SourceTable:
    rows: pd.DataFrame  # path, label_name, split
    pixels: np.ndarray | None = None  # (N, H, W) uint8 when the source is already decoded
    classes: list[str] | None = None  # label index -> name, when the source defines it
    skipped: list[str] | None = None  # files in a folder that are not images by extension


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        data = fh.read()
    got, n = struct.unpack(">II", data[:8])
    if got != magic:
        raise DataError(f"{path}: not an IDX file (magic {got}, expected {magic}); reinstall dataset-fashion-mnist")
    if magic == 2051:
        rows, cols = struct.unpack(">II", data[8:16])
        arr = np.frombuffer(data, dtype=np.uint8, offset=16)
        if arr.size != n * rows * cols:
            raise DataError(f"{path}: truncated ({arr.size} of {n * rows * cols} bytes); reinstall dataset-fashion-mnist")
        return arr.reshape(n, rows, cols)
    arr = np.frombuffer(data, dtype=np.uint8, offset=8)
    if arr.size != n:
        raise DataError(f"{path}: truncated labels; reinstall dataset-fashion-mnist")
    return arr


def find_fashion_mnist(raw_dir: Path, download: bool = True) -> Path:
    """The folder holding the four Fashion-MNIST .gz files: Debian's package, else torchvision's download."""
    names = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    candidates = [*FASHION_MNIST_DIRS, raw_dir / "FashionMNIST" / "raw"]
    for folder in candidates:
        if all((folder / n).is_file() for n in names):
            return folder
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            for train in (True, False):
                FashionMNIST(root=str(raw_dir), train=train, download=True)
        except Exception as exc:  # network errors differ by platform
            raise DataError(
                "Fashion-MNIST not found and the download failed "
                f"({type(exc).__name__}); on Debian/Ubuntu run `apt-get install dataset-fashion-mnist`, "
                f"or put the four .gz files in {raw_dir / 'FashionMNIST' / 'raw'}"
            ) from None
        if all((candidates[-1] / n).is_file() for n in names):
            return candidates[-1]
    raise DataError(
        "Fashion-MNIST not found; on Debian/Ubuntu run `apt-get install dataset-fashion-mnist`, "
        f"or put the four .gz files in {raw_dir / 'FashionMNIST' / 'raw'}"
    )


def fashion_mnist(raw_dir: Path, cap: int | None = None) -> SourceTable:
    folder = find_fashion_mnist(raw_dir)
    frames, pixels = [], []
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 2051)
        labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 2049)
        if len(images) != len(labels):
            raise DataError(f"{folder}: {prefix} has {len(images)} images but {len(labels)} labels; reinstall the data")
        n = len(images) if cap is None else min(cap, len(images))
        base = folder / f"{prefix}-images-idx3-ubyte.gz"
        frames.append(
            pd.DataFrame(
                {
                    "path": [f"{base}#{i}" for i in range(n)],
                    "label_name": labels[:n].astype(int),
                    "split": split,
                }
            )
        )
        pixels.append(images[:n])
    return SourceTable(pd.concat(frames, ignore_index=True), np.concatenate(pixels), classes=list(FASHION_MNIST_CLASSES))


def image_folder(root: Path) -> SourceTable:
    """Images under `root`. `root/train|test/<class>/…` or `root/<class>/…` give splits and labels;
    images directly in `root` (or in train/test without class folders) are unlabeled."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; set ingest.path to a folder of images")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    skipped = [str(p) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(
            f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "put images in it, optionally one subfolder per class"
        )
    top = {p.relative_to(root).parts[0] for p in images if len(p.relative_to(root).parts) > 1}
    has_splits = bool(top) and top <= set(SPLITS)
    rows = []
    for p in images:
        parts = list(p.relative_to(root).parts[:-1])
        split = parts.pop(0) if has_splits and parts else None
        label = parts[0] if parts else None
        rows.append((str(p), label, split))
    df = pd.DataFrame(rows, columns=["path", "label_name", "split"])
    return SourceTable(df, skipped=skipped)


def manifest_file(path: Path) -> SourceTable:
    """A CSV or Parquet file with a `path` column and optional `label` and `split` columns.
    Relative paths are resolved against the manifest's folder."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found; set ingest.path to a CSV or Parquet file with path,label,split")
    try:
        df = pd.read_parquet(path) if path.suffix.lower() in (".parquet", ".pq") else pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path}: cannot read manifest ({type(exc).__name__}: {exc}); write it as CSV or Parquet") from None
    if "path" not in df.columns:
        raise DataError(f"{path}: manifest has no 'path' column (columns: {list(df.columns)}); add one")
    unknown = set(df.columns) - {"path", "label", "split"}
    if unknown:
        raise DataError(f"{path}: unknown manifest column(s) {sorted(unknown)}; allowed: path, label, split")
    for i, value in enumerate(df["path"]):
        if not isinstance(value, str) or not value.strip():
            raise DataError(f"{path}: row {i + 2}: empty path; every row needs the image's path")
    split = df["split"] if "split" in df.columns else pd.Series([None] * len(df))
    split = split.where(split.notna(), None)
    bad = [(i, s) for i, s in enumerate(split) if s is not None and s not in SPLITS]
    if bad:
        i, s = bad[0]
        raise DataError(f"{path}: row {i + 2}: split {s!r} is not one of {list(SPLITS)}; fix it or leave it empty")
    base = path.parent
    paths = [str(p if Path(p).is_absolute() else base / p) for p in df["path"].str.strip()]
    labels = df["label"] if "label" in df.columns else pd.Series([None] * len(df))
    labels = [None if pd.isna(v) else v for v in labels]
    return SourceTable(pd.DataFrame({"path": paths, "label_name": labels, "split": list(split)}))
