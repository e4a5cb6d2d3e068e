"""Decoding one image file to the store's uint8 layout: what ingest runs on every file (in worker processes for
large folders, hence this light module: PIL and numpy only) and what `sslpipe embed` runs on new images."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def to_uint8(img: Image.Image, channels: int) -> Image.Image:
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


def resize(img: Image.Image, size: int) -> Image.Image:
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
            if img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size
                img.draft("L" if channels == 1 else "RGB", (size, size))
            img.load()
            out = resize(to_uint8(img, channels), size)
    except UnidentifiedImageError:
        info["decode_error"] = "not an image PIL can read"
        return None, info
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        info["decode_error"] = f"corrupt image ({type(exc).__name__}: {str(exc)[:120]})"
        return None, info
    arr = np.asarray(out, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr), info


def decode_block(paths: list[str], refused: list[Any], size: int, channels: int) -> tuple[np.ndarray, list[dict]]:
    """Decode consecutive files: (uint8 (n, C, size, size) with zeros where a file failed, manifest fields)."""
    out = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    fields: list[dict[str, Any]] = []
    for i, (path, why) in enumerate(zip(paths, refused, strict=True)):
        if isinstance(why, str):  # never opened: a link that leaves the source folder
            fields.append({"sha256": None, "width": None, "height": None, "mode": None, "decode_error": why})
            continue
        decoded, info = decode_file(path, size, channels)
        if decoded is not None:
            out[i] = decoded
        fields.append(info)
    return out, fields
