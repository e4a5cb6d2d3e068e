"""ingest: a source -> `manifest.parquet` (one row per image) + a decoded uint8 store (`store.npy`).

Every image is decoded exactly once here, converted to the configured channels and resized to a square of
`image_size`: in blocks of BLOCK images, on every core (a process pool) for large folders, written to the store
block by block, so ingest never holds the whole store in memory. JPEGs larger than `image_size` are decoded at
reduced size in the DCT domain (PIL's draft mode: 1/2, 1/4 or 1/8 scale, never below `image_size`; see
ssl_components/decode.py). A file that cannot be decoded (or a link leaving the source folder, which is not
even opened) does not stop ingest: its row keeps the reason in `decode_error` and validate quarantines it.

Growing data keeps what it had: an image's id is its path within the source, an image without a given split
gets one from its content (`content_split`), and a class keeps its id (`classes.json` is extended, never
re-sorted). So images added between runs never move old images between train and test.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from ssl_components.config import IngestConfig
from ssl_components.data import sources
from ssl_components.data.dataset import CLASSES, MANIFEST, STORE
from ssl_components.decode import decode_block, resize, to_uint8
from ssl_components.errors import DataError
from ssl_components.io import npy_rows, read_json, write_json, write_parquet

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["id", "path", "sha256", "width", "height", "mode", "label", "split", "decode_error"]
BLOCK = 512  # images per decode task and per write to the store
# smaller folders are decoded in this process: starting spawned workers costs ~0.5-1 s, and on 2 cores even
# 25,000-100,000 files gained only 0.9-1.6x from the pool (docs/benchmarks.md)
POOL_MIN_IMAGES = 20 * BLOCK


def decode_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _decoded_blocks(paths: list[str], refused: list[Any], size: int, channels: int) -> Iterator[tuple[np.ndarray, list[dict]]]:
    """The files decoded block by block, in order; on every core when there are enough of them."""
    starts = range(0, len(paths), BLOCK)
    blocks = ([paths[s : s + BLOCK] for s in starts], [refused[s : s + BLOCK] for s in starts])
    decode = functools.partial(decode_block, size=size, channels=channels)
    workers = min(decode_workers(), len(starts))
    if len(paths) < POOL_MIN_IMAGES or workers < 2:
        yield from map(decode, *blocks)
        return
    # spawn, not fork: the caller may be a multi-threaded process (a Prefect flow) with torch loaded
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        # a bounded window of blocks in flight (pool.map would queue every block, and decoded blocks that wait
        # for their turn would pile up in this process's memory)
        pending: collections.deque = collections.deque()
        for args in zip(*blocks):
            pending.append(pool.submit(decode, *args))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _labels(names: pd.Series, classes: list[str] | None, known: list[str]) -> tuple[pd.Series, list[str]]:
    """Label names -> integer labels (nullable). Integer names are kept. String names keep the ids they had in
    `known` (the class list of the previous ingest), and new names are appended in sorted order, so a class's
    id never changes when the data grows."""
    present = names.dropna()
    if present.empty:
        return pd.Series([pd.NA] * len(names), dtype="Int64"), classes or []
    if all(isinstance(v, (int, np.integer)) or (isinstance(v, float) and float(v).is_integer()) for v in present):
        labels = names.map(lambda v: pd.NA if v is None or pd.isna(v) else int(v)).astype("Int64")
        if classes is None:
            classes = [str(i) for i in range(int(labels.max()) + 1)]
        return labels, classes
    names = names.map(lambda v: None if v is None or pd.isna(v) else str(v))
    classes = [*known, *sorted(set(names.dropna()) - set(known))]
    index = {c: i for i, c in enumerate(classes)}
    return names.map(lambda v: pd.NA if v is None or pd.isna(v) else index[v]).astype("Int64"), classes


def _known_classes(data_dir: Path) -> list[str]:
    try:
        return list(read_json(data_dir / CLASSES)["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _pixels_to_store(pixels: np.ndarray, size: int, channels: int) -> np.ndarray:
    """A grayscale uint8 (H, W) image of an in-memory source -> (C, size, size), as files are decoded."""
    arr = np.asarray(resize(to_uint8(Image.fromarray(pixels, mode="L"), channels), size), dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def content_split(sha256: str, test_fraction: float) -> str:
    """'test' for a stable `test_fraction` share of images, chosen by their content: an image keeps its split
    however many images are added or removed around it."""
    return "test" if int(sha256[:13], 16) / 16**13 < test_fraction else "train"


def _assign_splits(split: pd.Series, labels: pd.Series, sha256: pd.Series, test_fraction: float) -> pd.Series:
    """Rows without a split get one from their content; unlabelled images (useless for testing) train."""
    split = split.astype(object).copy()
    for i in np.flatnonzero(split.isna().to_numpy()):
        sha = sha256.iloc[i]
        labelled = not pd.isna(labels.iloc[i])
        split.iloc[i] = content_split(sha, test_fraction) if labelled and isinstance(sha, str) else "train"
    return split


def ingest(cfg: IngestConfig, data_dir: str | Path) -> dict:
    """Run the ingest stage. Writes `manifest.parquet`, `store.npy` and `classes.json` under `data_dir`."""
    data_dir = Path(data_dir)
    if cfg.source == "fashion_mnist":
        table = sources.fashion_mnist(data_dir / "raw", cap=cfg.max_images_per_split)
    elif cfg.source == "folder":
        assert cfg.path is not None  # IngestConfig requires path for folder and manifest sources
        table = sources.image_folder(Path(cfg.path), follow_links=cfg.follow_links)
    else:
        assert cfg.path is not None
        table = sources.manifest_file(Path(cfg.path))
    rows = table.rows.reset_index(drop=True)
    if cfg.source != "fashion_mnist" and cfg.max_images_per_split:
        rows = rows.groupby(rows["split"].fillna("?"), group_keys=False, sort=False).head(cfg.max_images_per_split).reset_index(drop=True)
    if rows.empty:
        raise DataError("the source has no images; point ingest.path at a folder or manifest with images")

    labels, classes = _labels(rows["label_name"], table.classes, _known_classes(data_dir))  # before the store is replaced
    n, size, ch = len(rows), cfg.image_size, cfg.channels
    shape = (n, ch, size, size)
    fields: list[dict[str, Any]] = []
    data_dir.mkdir(parents=True, exist_ok=True)
    with npy_rows(data_dir / STORE, shape) as write, tqdm(total=n, desc="ingest: decode", unit="img", mininterval=2) as bar:
        if table.pixels is not None:
            pixels = table.pixels
            h, w = pixels.shape[1:]
            for start in range(0, n, BLOCK):
                block = pixels[start : start + BLOCK]
                if block.shape[1:] != (size, size) or ch != 1:
                    block = np.stack([_pixels_to_store(p, size, ch) for p in block])
                else:
                    block = block[:, None]
                write(block)
                bar.update(len(block))
            fields = [
                {"sha256": hashlib.sha256(pixels[i].tobytes()).hexdigest(), "width": w, "height": h, "mode": "L", "decode_error": None}
                for i in range(n)
            ]
        else:
            refused = list(rows["refused"]) if "refused" in rows else [None] * n
            for block, infos in _decoded_blocks(list(rows["path"]), refused, size, ch):
                write(block)
                fields.extend(infos)
                bar.update(len(block))

    manifest = pd.DataFrame(fields)
    manifest.insert(0, "path", rows["path"])
    manifest.insert(0, "id", rows["id"])
    manifest["label"] = labels
    manifest["split"] = _assign_splits(rows["split"], labels, manifest["sha256"], cfg.test_fraction)
    manifest["width"] = manifest["width"].astype("Int64")
    manifest["height"] = manifest["height"].astype("Int64")
    manifest = manifest[MANIFEST_COLUMNS]

    write_json(data_dir / CLASSES, {"classes": classes})
    write_parquet(data_dir / MANIFEST, manifest)  # written last: its presence means ingest finished
    summary = {
        "images": n,
        "train": int((manifest["split"] == "train").sum()),
        "val": int((manifest["split"] == "val").sum()),
        "test": int((manifest["split"] == "test").sum()),
        "labeled": int(manifest["label"].notna().sum()),
        "classes": len(classes),
        "decode_errors": int(manifest["decode_error"].notna().sum()),
        "skipped_non_image_files": len(table.skipped or []),
        "refused_links": int(rows["refused"].notna().sum()) if "refused" in rows else 0,
        "store_shape": list(shape),
    }
    log.info("ingest: %s", summary)
    return summary
