"""ingest: a source -> `manifest.parquet` (one row per image) + a decoded uint8 store (`store.npy`).

Every image is decoded exactly once here, converted to the configured channels and resized to a square of
`image_size`. A file that cannot be decoded (or a link leaving the source folder, which is not even opened)
does not stop ingest: its row keeps the reason in `decode_error` and validate quarantines it.

Growing data keeps what it had: an image's id is its path within the source, an image without a given split
gets one from its content (`content_split`), and a class keeps its id (`classes.json` is extended, never
re-sorted). So images added between runs never move old images between train and test.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from ssl_components.config import IngestConfig
from ssl_components.data import sources
from ssl_components.data.dataset import CLASSES, MANIFEST, STORE
from ssl_components.errors import DataError
from ssl_components.io import read_json, save_npy, write_json, write_parquet

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["id", "path", "sha256", "width", "height", "mode", "label", "split", "decode_error"]


def _to_uint8(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 8-bit L or RGB. 16/32-bit images are scaled by their range, alpha is composited on black."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    elif img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if channels == 1 else "RGB")


def _resize(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to `size`, then a centre crop: keeps the aspect ratio."""
    if img.size == (size, size):
        return img
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)


def decode_file(path: str, size: int, channels: int) -> tuple[np.ndarray | None, dict]:
    """Decode one image file. Returns (C,H,W uint8 array or None, manifest fields)."""
    info: dict[str, Any] = {"sha256": None, "width": None, "height": None, "mode": None, "decode_error": None}
    p = Path(path)
    if not p.is_file():
        info["decode_error"] = "file not found"
        return None, info
    data = p.read_bytes()
    info["sha256"] = hashlib.sha256(data).hexdigest()
    if not data:
        info["decode_error"] = "empty file (0 bytes)"
        return None, info
    try:
        with Image.open(io.BytesIO(data)) as img:
            info.update(width=img.width, height=img.height, mode=img.mode)
            img.load()
            out = _resize(_to_uint8(img, channels), size)
    except UnidentifiedImageError:
        info["decode_error"] = "not an image PIL can read"
        return None, info
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        info["decode_error"] = f"corrupt image ({type(exc).__name__}: {str(exc)[:120]})"
        return None, info
    arr = np.asarray(out, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), info


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

    n, size, ch = len(rows), cfg.image_size, cfg.channels
    store = np.zeros((n, ch, size, size), dtype=np.uint8)
    fields: list[dict[str, Any]] = []
    if table.pixels is not None:
        pixels = table.pixels
        if pixels.shape[1:] != (size, size) or ch != 1:
            for i in tqdm(range(n), desc="ingest: resize", unit="img", mininterval=2):
                img = _to_uint8(Image.fromarray(pixels[i], mode="L"), ch)
                arr = np.asarray(_resize(img, size), dtype=np.uint8)
                store[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        else:
            store[:, 0] = pixels
        h, w = pixels.shape[1:]
        fields = [
            {"sha256": hashlib.sha256(pixels[i].tobytes()).hexdigest(), "width": w, "height": h, "mode": "L", "decode_error": None}
            for i in range(n)
        ]
    else:
        refused = rows["refused"] if "refused" in rows else pd.Series([None] * n)
        for i, path in enumerate(tqdm(rows["path"], desc="ingest: decode", unit="img", mininterval=2)):
            if isinstance(refused.iloc[i], str):  # never opened: a link that leaves the source folder
                fields.append({"sha256": None, "width": None, "height": None, "mode": None, "decode_error": refused.iloc[i]})
                continue
            decoded, info = decode_file(path, size, ch)
            if decoded is not None:
                store[i] = decoded
            fields.append(info)

    labels, classes = _labels(rows["label_name"], table.classes, _known_classes(data_dir))
    manifest = pd.DataFrame(fields)
    manifest.insert(0, "path", rows["path"])
    manifest.insert(0, "id", rows["id"])
    manifest["label"] = labels
    manifest["split"] = _assign_splits(rows["split"], labels, manifest["sha256"], cfg.test_fraction)
    manifest["width"] = manifest["width"].astype("Int64")
    manifest["height"] = manifest["height"].astype("Int64")
    manifest = manifest[MANIFEST_COLUMNS]

    data_dir.mkdir(parents=True, exist_ok=True)
    save_npy(data_dir / STORE, store)
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
        "store_shape": list(store.shape),
    }
    log.info("ingest: %s", summary)
    return summary
