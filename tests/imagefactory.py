"""Tiny real image files for tests: PNGs written with PIL, plus broken files of the kinds ingest must survive.

Import from a test module with `from imagefactory import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def pixels(seed: int, size: int = 12, channels: int = 1) -> np.ndarray:
    """A distinct random uint8 image (H, W) or (H, W, C) per seed."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def write_png(path: str | Path, seed: int = 0, size: int = 12, mode: str = "L", array: np.ndarray | None = None) -> Path:
    """A PNG of `mode` ('L', 'RGB', 'RGBA' or 'I;16') with distinct content per seed (or the given array)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is not None:
        img = Image.fromarray(array)
    elif mode == "I;16":
        img = Image.fromarray(pixels(seed, size).astype(np.uint16) * 257)  # uint16 -> mode I;16
    else:
        img = Image.fromarray(pixels(seed, size, {"L": 1, "RGB": 3, "RGBA": 4}[mode]), mode=mode)
    img.save(path, format="PNG")
    return path


def image_folder(root: str | Path, classes=("cat", "dog"), per_class: int = 10, splits=None, size: int = 12, seed: int = 0) -> Path:
    """root/<class>/*.png, or root/<split>/<class>/*.png for each split in `splits`. Every image is distinct."""
    root = Path(root)
    for s, split in enumerate(splits or [None]):
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            for i in range(per_class):
                write_png(folder / f"{i:03d}.png", seed=seed + 10_000 * s + 1000 * c + i, size=size)
    return root


def flat_folder(root: str | Path, n: int = 10, size: int = 12, seed: int = 0) -> Path:
    """Unlabeled: root/*.png."""
    root = Path(root)
    for i in range(n):
        write_png(root / f"img{i:03d}.png", seed=seed + i, size=size)
    return root


def write_corrupt_png(path: str | Path, seed: int = 99) -> Path:
    """A real PNG cut in half: PIL recognises it but cannot decode it."""
    path = Path(path)
    write_png(path, seed=seed, size=20)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def write_empty(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def write_text_as_image(path: str | Path) -> Path:
    """Not an image at all, under an image extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a picture\n")
    return path
