"""Where images come from: Fashion-MNIST, an image folder, or a CSV/Parquet manifest.

Each source becomes one table with a row per image: `id` (its path within the source: stable as data grows),
`path`, `label_name` (None when unlabeled), `split` (None when the source has none) and, for folders, `refused`
(why a file is not read, or None). Fashion-MNIST also hands over its pixels, already decoded.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_components.errors import DataError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
SPLITS = ("train", "val", "test")
# folder names understood as splits: val is held out (never pretrained on, never the test set)
SPLIT_DIRS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
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
    rows: pd.DataFrame  # id, path, label_name, split (and refused, for folders)
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
                    "id": [f"{split}/{i:05d}" for i in range(n)],
                    "path": [f"{base}#{i}" for i in range(n)],
                    "label_name": labels[:n].astype(int),
                    "split": split,
                }
            )
        )
        pixels.append(images[:n])
    return SourceTable(pd.concat(frames, ignore_index=True), np.concatenate(pixels), classes=list(FASHION_MNIST_CLASSES))


def _walk(root: Path, follow_links: bool) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files under `root` (hidden ones skipped, linked folders followed once), and the links refused because they
    lead outside `root` (unless `follow_links`)."""
    real_root = root.resolve()
    files: list[Path] = []
    refused: list[tuple[Path, str]] = []
    seen = {real_root}
    stack = [root]
    while stack:
        folder = stack.pop()
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            real = path.resolve()
            if entry.is_symlink() and not follow_links and not real.is_relative_to(real_root):
                refused.append((path, f"link leaves the source folder (-> {real}); set ingest.follow_links: true to read it"))
            elif entry.is_dir():
                if real not in seen:
                    seen.add(real)
                    stack.append(path)
            elif entry.is_file():
                files.append(path)
    return sorted(files), sorted(refused)


def image_folder(root: Path, follow_links: bool = False) -> SourceTable:
    """Images under `root`. `root/<class>/…` gives labels; `root/train|val|test/<class>/…` gives splits and labels;
    images directly in `root` (or in a split folder without class folders) are unlabeled. Files reached through
    links that leave `root` are refused (listed with the reason, never opened) unless `follow_links`."""
    if not root.is_dir():
        raise DataError(f"{root}: image folder not found; set ingest.path to a folder of images")
    files, refused = _walk(root, follow_links)
    images = [p for p in files if p.suffix.lower() in IMAGE_EXTENSIONS]
    skipped = [str(p) for p in files if p.suffix.lower() not in IMAGE_EXTENSIONS]
    if not images and not refused:
        raise DataError(
            f"{root}: no image files found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
            "put images in it, optionally one subfolder per class"
        )
    parts_of = {p: p.relative_to(root).parts for p in images}
    top = {parts[0] for parts in parts_of.values() if len(parts) > 1}
    split_dirs = {t for t in top if t.lower() in SPLIT_DIRS}
    if split_dirs and (top - split_dirs or any(len(parts) == 1 for parts in parts_of.values())):
        others = sorted(top - split_dirs) or ["images directly in the folder"]
        raise DataError(
            f"{root}: has split folders ({', '.join(sorted(split_dirs))}) beside {', '.join(others[:5])}; "
            "put every image under train/, val/ or test/ (one subfolder per class), or use no split folders at all"
        )
    rows: list[tuple[str, str, str | None, str | None, str | None]] = []
    for p, parts in parts_of.items():
        folders = list(parts[:-1])
        split = SPLIT_DIRS[folders.pop(0).lower()] if split_dirs else None
        label = folders[0] if folders else None
        rows.append((Path(*parts).as_posix(), str(p), label, split, None))
    for p, reason in refused:
        rows.append((p.relative_to(root).as_posix(), str(p), None, None, reason))
    df = pd.DataFrame(rows, columns=["id", "path", "label_name", "split", "refused"])
    return SourceTable(df.sort_values("id", ignore_index=True), skipped=skipped)


def manifest_file(path: Path) -> SourceTable:
    """A CSV or Parquet file with a `path` column and optional `label` and `split` columns.
    Relative paths are resolved against the manifest's folder; an image's id is its path as written."""
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
    written = df["path"].str.strip()
    first: dict[str, int] = {}
    for i, p in enumerate(written):
        if p in first:
            raise DataError(f"{path}: row {i + 2}: path {p!r} is listed twice (first at row {first[p] + 2}); list each image once")
        first[p] = i
    base = path.parent
    paths = [str(p if Path(p).is_absolute() else base / p) for p in written]
    labels = df["label"] if "label" in df.columns else pd.Series([None] * len(df))
    labels = [None if pd.isna(v) else v for v in labels]
    table = pd.DataFrame({"id": list(written), "path": paths, "label_name": labels, "split": list(split)})
    return SourceTable(table.sort_values("id", ignore_index=True))
