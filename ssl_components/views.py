"""cache_views: augmented view pairs as content-addressed uint8 shards, and the provider training reads.

Layout: `cache_dir/<key>/meta.json` plus, in `cached` mode, `pair_0000.npy` ... one (2, N, C, H, W) uint8
array per pair. The caller names the key: the pipeline passes the cache_views stage's record key (a fingerprint
of the validated data's content, the cache_views settings, the seed and the augmentation code), so a change to
any of them gives a new directory; older key directories are removed.

Pair k (cached) and epoch k (online) come from the same function with a CPU generator seeded from
(seed, k): they are identical for the same settings, any pair can be regenerated on its own, and random
parameters do not depend on the device (a GPU run differs from a CPU run only by float rounding).

meta.json also records a digest of the train images themselves: a cache whose images differ is regenerated
(cache_views) or refused (ViewProvider), whatever its key says.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssl_components.augment import augment_batch, two_views
from ssl_components.config import CacheViewsConfig
from ssl_components.data.dataset import load_dataset
from ssl_components.distributed import rank
from ssl_components.errors import DataError
from ssl_components.io import atomic_path, fingerprint, read_json, write_json

META = "meta.json"
_KEY_DIR = re.compile(r"^[0-9a-f]{16}$")


def pair_path(key_dir: str | Path, k: int) -> Path:
    return Path(key_dir) / f"pair_{k:04d}.npy"


def images_digest(images: torch.Tensor) -> str:
    """sha256 of the images' shape and bytes: ties a cache to exactly these images, in this order."""
    arr = np.ascontiguousarray(images.detach().cpu().numpy())
    h = hashlib.sha256(repr(tuple(arr.shape)).encode())
    h.update(arr.data.cast("B"))  # arr.data: the memoryview of the contiguous array
    return h.hexdigest()


def _generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator seeded from (seed, index) by a stable hash: pair/epoch `index` stands on its own."""
    return torch.Generator().manual_seed(int(fingerprint("views", int(seed), int(index)), 16) & (2**63 - 1))


def _view_batches(
    images: torch.Tensor, cfg: CacheViewsConfig, seed: int, index: int, device: str | torch.device
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(start, view1, view2) for consecutive batches of cfg.batch_size images, augmented on `device`."""
    gen = _generator(seed, index)
    for start in range(0, len(images), cfg.batch_size):
        v1, v2 = two_views(images[start : start + cfg.batch_size].to(device), cfg, gen)
        yield start, v1, v2


def _expected_meta(key: str, cfg: CacheViewsConfig, seed: int, images: torch.Tensor) -> dict:
    return {
        "key": key,
        "mode": cfg.mode,
        "num_pairs": cfg.num_pairs,
        "shape": [2, *images.shape],
        "cfg": cfg.model_dump(mode="json"),
        "seed": int(seed),
        "images_sha256": images_digest(images),
    }


def _is_hit(key_dir: Path, expected: dict) -> bool:
    try:
        meta = read_json(key_dir / META)
    except (OSError, ValueError):
        return False
    if any(meta.get(k) != v for k, v in expected.items()):
        return False
    return expected["mode"] == "online" or all(pair_path(key_dir, k).is_file() for k in range(expected["num_pairs"]))


def _dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _evict_others(cache_dir: Path, key: str) -> list[str]:
    """Remove key directories other than `key` (only names that look like keys; nothing else is touched)."""
    removed = []
    for entry in cache_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink() and _KEY_DIR.match(entry.name) and entry.name != key:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
    return removed


def cache_views(cfg: CacheViewsConfig, data_dir: str | Path, cache_dir: str | Path, seed: int, key: str, device: str = "cpu") -> dict:
    """Run the cache_views stage on the train split of `data_dir` (quarantined images excluded), into
    `cache_dir/<key>` (`key`: 16 hex digits naming what the views are made from).

    Returns {key, mode, hit, pairs, images (train images), views (augmented images written),
    seconds, images_per_s (augmented images per second; 0 when nothing was generated), bytes, evicted}.
    """
    images = load_dataset(data_dir, "train").images
    if len(images) == 0:
        raise DataError(f"{data_dir}: the train split is empty; nothing to augment")
    return write_views(images, cfg, cache_dir, seed, key, device)


def write_views(images: torch.Tensor, cfg: CacheViewsConfig, cache_dir: str | Path, seed: int, key: str, device: str = "cpu") -> dict:
    """The view cache of `images` (uint8 (N, C, H, W)) under `cache_dir/<key>`: what `cache_views` does once it has
    read the train split. Returns the same summary."""
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    if not _KEY_DIR.match(key):
        raise ValueError(f"view cache key must be 16 hex digits, got {key!r}")
    key_dir = cache_dir / key
    expected = _expected_meta(key, cfg, seed, images)
    summary: dict[str, Any] = {
        "key": key,
        "mode": cfg.mode,
        "pairs": cfg.num_pairs if cfg.mode == "cached" else 0,
        "images": len(images),
        "views": 0,
        "images_per_s": 0.0,
    }

    hit = _is_hit(key_dir, expected)
    if not hit:
        with atomic_path(key_dir) as tmp:
            tmp.mkdir()
            gen_start = time.perf_counter()
            if cfg.mode == "cached":
                total = 2 * len(images) * cfg.num_pairs
                with tqdm(total=total, desc="cache_views", unit="img", unit_scale=True, mininterval=2) as bar:
                    for k in range(cfg.num_pairs):
                        out = np.lib.format.open_memmap(pair_path(tmp, k), mode="w+", dtype=np.uint8, shape=tuple(expected["shape"]))
                        for start, v1, v2 in _view_batches(images, cfg, seed, k, device):
                            out[0, start : start + len(v1)] = v1.cpu().numpy()
                            out[1, start : start + len(v2)] = v2.cpu().numpy()
                            bar.update(2 * len(v1))
                        out.flush()
                        del out
                summary["views"] = total
            gen_seconds = time.perf_counter() - gen_start
            summary["images_per_s"] = summary["views"] / gen_seconds if summary["views"] else 0.0
            # only what the views are made from: the same views are the same bytes (timings go in the summary)
            write_json(tmp / META, {**expected, "device": str(device)})
    summary.update(hit=hit, evicted=_evict_others(cache_dir, key), bytes=_dir_bytes(key_dir), seconds=time.perf_counter() - t0)
    return summary


class ViewProvider:
    """The views training sees each epoch, aligned with `images` (uint8 (N, C, H, W) train images).

    cached: epoch e reads pair e % num_pairs from the cache written by `cache_views` (memory-mapped);
    online: epoch e is generated fresh, on `device`, from a generator seeded from (seed, e), so a run resumed
    at epoch e sees the same views as an uninterrupted one. Returned tensors are on `images.device`.
    """

    def __init__(
        self,
        cfg: CacheViewsConfig,
        images: torch.Tensor,
        cache_dir: str | Path,
        seed: int,
        key: str,
        device: str | torch.device = "cpu",
    ):
        self.cfg, self.images, self.seed, self.device, self.key = cfg, images, int(seed), device, key
        self.dir = Path(cache_dir) / key
        if cfg.mode == "cached":
            if not _is_hit(self.dir, _expected_meta(key, cfg, seed, images)):
                raise DataError(
                    f"view cache {self.dir} is missing or stale; run the cache_views stage "
                    f"(it must match these {len(images)} train images, cache_views settings and seed {seed})"
                )

    def local_views(self, epoch: int, step: int, idx: torch.Tensor) -> list[torch.Tensor]:
        """Multi-crop's `local_crops` small views (uint8, local_size²) of images[idx], drawn for this batch only,
        from a generator seeded from (seed, epoch, step): a resumed run draws the same ones."""
        cfg = self.cfg.model_copy(update={"crop_scale": self.cfg.local_crop_scale})
        parts = (self.seed, int(epoch), int(step)) + ((rank(),) if rank() else ())  # data-parallel ranks: their own draws
        gen = torch.Generator().manual_seed(int(fingerprint("local", *parts), 16) & (2**63 - 1))
        images = self.images[idx].to(self.device)
        return [augment_batch(images, cfg, gen, out_size=cfg.local_size).to(self.images.device) for _ in range(cfg.local_crops)]

    def epoch_views(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.mode == "cached":
            # mmap "c" (copy-on-write): no read until used, and a writable array for torch.from_numpy.
            pair = np.load(pair_path(self.dir, epoch % self.cfg.num_pairs), mmap_mode="c")
            return torch.from_numpy(pair[0]).to(self.images.device), torch.from_numpy(pair[1]).to(self.images.device)
        v1 = torch.empty_like(self.images)
        v2 = torch.empty_like(self.images)
        for start, a, b in _view_batches(self.images, self.cfg, self.seed, epoch, self.device):
            v1[start : start + len(a)] = a.to(v1.device)
            v2[start : start + len(b)] = b.to(v2.device)
        return v1, v2
