"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A crash or a bad input never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path; on success it replaces `target` (file or directory) in one rename."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix + ".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    tmp_path.unlink()
    try:
        yield tmp_path
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp_path.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, target)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def npy_rows(path: str | Path, shape: tuple[int, ...]) -> Iterator[Callable[[np.ndarray], None]]:
    """Write a uint8 .npy array of a known shape block of rows by block, atomically: yields `write(block)`, where a
    block is rows of the array's last dimensions (images (b, C, H, W) of an (N, C, H, W) or (2, N, C, H, W) array),
    written in C order. The array is never in memory at once, and `path` appears only once every byte is written
    (an error or a kill leaves no file); `np.load(path, mmap_mode="r")` or `StoredImages` reads it."""
    shape = tuple(shape)
    total = int(np.prod(shape))
    with atomic_path(path, suffix=".npy") as tmp, open(tmp, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|u1", "fortran_order": False, "shape": shape})
        written = 0

        def write(block: np.ndarray) -> None:
            nonlocal written
            tail = shape[len(shape) - block.ndim + 1 :] if block.ndim > 1 else ()
            if block.dtype != np.uint8 or block.ndim < 2 or block.shape[1:] != tail:
                raise ValueError(f"expected uint8 rows of shape {shape[1:]}, got {block.dtype} {block.shape[1:]}")
            fh.write(np.ascontiguousarray(block).data)
            written += block.size

        yield write
        if written != total:
            raise ValueError(f"{path}: {written} bytes of data written, {total} expected")


def save_torch(path: str | Path, obj: Any) -> Path:
    """torch.save, atomically. Saved through a file handle: torch names the archive inside after a path it is
    given (here a random temporary name), so the same object always gives the same bytes only this way."""
    import torch

    with atomic_path(path, suffix=".pt") as tmp:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
    return Path(path)


def write_parquet(path: str | Path, df) -> Path:
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return Path(path)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts (settings, other hashes)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
