"""Images read from disk when indexed: chosen rows of an uncompressed uint8 .npy file (the decoded store, a
view-cache pair), never the whole file.

Rows are read with `os.preadv` into buffers the caller owns, not memory-mapped: a mapped file's pages count in
the process's RSS and address space once touched, so an epoch over a mapped store would hold the whole store in
the end. A batch of random rows is one read per run of consecutive rows. `StoredImages` behaves like the uint8
(N, C, H, W) tensor it stands for where the pipeline uses one: `len`, `.shape`, `[index]` (int, slice, integer
or boolean index arrays) gives a tensor; `take` chooses rows without reading them.
"""

from __future__ import annotations

import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssl_components.errors import DataError


def _header(path: Path) -> tuple[tuple[int, ...], int]:
    """(shape, byte offset of the data) of a C-ordered uint8 .npy file."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            offset = fh.tell()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc}); re-run the stage that writes it") from exc
    if dtype != np.uint8 or fortran or len(shape) < 4:
        raise DataError(f"{path}: expected C-ordered uint8 images (..., C, H, W), found {dtype} {shape}; re-run the stage that writes it")
    return tuple(int(s) for s in shape), offset


class _File:
    """One open descriptor per file and process, shared by every row selection of it; closed when unused."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)  # pread has no shared file offset: a forked child may use it too
        weakref.finalize(self, os.close, self.fd)

    def __getstate__(self) -> dict[str, Any]:  # another process opens the file itself
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]


class StoredImages:
    """uint8 images (N, C, H, W): `rows` of the file's (M, C, H, W) images (leading dimensions flattened)."""

    dtype = torch.uint8
    device = torch.device("cpu")

    def __init__(self, path: str | Path, rows: np.ndarray | None = None, *, _file: _File | None = None, _meta: Any = None):
        self.path = Path(path)
        if _meta is None:
            shape, offset = _header(self.path)
            _meta = (shape[-3:], int(np.prod(shape[:-3])), offset)
        self.item_shape, self.total, self.offset = _meta
        self.row_bytes = int(np.prod(self.item_shape))
        expected = self.offset + self.total * self.row_bytes
        self._file = _file or _File(self.path)
        if _file is None and os.fstat(self._file.fd).st_size < expected:
            raise DataError(f"{self.path} is shorter than its header says ({expected} bytes); re-run the stage that writes it")
        self.rows = np.arange(self.total, dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    # -- the tensor-like surface
    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.item_shape))

    def take(self, index: Any) -> StoredImages:
        """These rows chosen by `index` (as for `[]`), nothing read yet."""
        return StoredImages(self.path, self.rows[_numpy_index(index)], _file=self._file, _meta=(self.item_shape, self.total, self.offset))

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)):
            return self[np.array([index])][0]
        return torch.from_numpy(self.read(self.rows[_numpy_index(index)]))

    def load(self) -> torch.Tensor:
        """Every chosen row, in memory (for sets known to be small)."""
        return self[:]

    # -- reading
    def read(self, positions: np.ndarray) -> np.ndarray:
        """Rows at `positions` of the file, (n, C, H, W) uint8: one preadv per run of consecutive positions."""
        positions = np.asarray(positions, dtype=np.int64)
        out = np.empty((len(positions), *self.item_shape), dtype=np.uint8)
        if not len(positions):
            return out
        if positions.min() < 0 or positions.max() >= self.total:
            raise IndexError(
                f"row {positions.min() if positions.min() < 0 else positions.max()} out of range for {self.total} images in {self.path}"
            )
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        sorted_already = bool(np.all(order == np.arange(len(order))))
        buf = out if sorted_already else np.empty_like(out)
        flat = buf.reshape(len(buf), self.row_bytes)
        breaks = np.flatnonzero(np.diff(ordered) != 1) + 1
        for start, end in zip(np.r_[0, breaks], np.r_[breaks, len(ordered)]):
            self._pread(flat[start:end].data.cast("B"), self.offset + int(ordered[start]) * self.row_bytes)
        if not sorted_already:
            out[order] = buf
        return out

    def _pread(self, view: memoryview, offset: int) -> None:
        done = 0
        while done < len(view):
            n = os.preadv(self._file.fd, [view[done:]], offset + done)
            if n <= 0:
                raise DataError(f"{self.path}: file ended early at byte {offset + done}; re-run the stage that writes it")
            done += n


def _numpy_index(index: Any) -> Any:
    if isinstance(index, torch.Tensor):
        return index.cpu().numpy()
    return index


Images = torch.Tensor | StoredImages  # what the stages accept: images in memory, or rows read from disk


def take_rows(images: Images, index: Any) -> Images:
    """The rows `index` of `images`: still on disk for stored images (nothing read), a tensor for a tensor."""
    return images.take(index) if isinstance(images, StoredImages) else images[index]
