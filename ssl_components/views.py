"""cache_views: augmented view pairs as content-addressed uint8 shards, and the provider training reads.

Layout: `cache_dir/<key>/meta.json` plus, in `cached` mode, `pair_0000.npy` ... one (2, N, C, H, W) uint8
array per pair. The caller names the key: the pipeline passes the cache_views stage's record key (a fingerprint
of the validated data's content, the cache_views settings, the seed and the augmentation code), so a change to
any of them gives a new directory; older key directories are removed.

Pair k (cached) and epoch k (online) are made from the same random parameters (`epoch_params`: both views of
every image, drawn from a CPU generator seeded from (seed, k)): they are identical for the same settings, any
pair can be regenerated on its own, and random parameters do not depend on the device (a GPU run differs from a
CPU run only by float rounding). Online, training makes each batch's views as it needs them, from those rows of
the parameters: no epoch of views is ever held whole. The cache is optional and bounded: a cache larger than
`cache_views.max_gib` is refused before anything is written.

meta.json also records a digest of the train images themselves: a cache whose images differ is regenerated
(cache_views) or refused (ViewProvider), whatever its key says.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ssl_components.augment import ViewParams, apply_params, augment_batch, draw_params
from ssl_components.config import CacheViewsConfig
from ssl_components.data.dataset import load_dataset
from ssl_components.data.store import Images, StoredImages
from ssl_components.distributed import rank
from ssl_components.errors import ConfigError, DataError
from ssl_components.io import atomic_path, fingerprint, npy_rows, read_json, write_json

META = "meta.json"
_KEY_DIR = re.compile(r"^[0-9a-f]{16}$")


def pair_path(key_dir: str | Path, k: int) -> Path:
    return Path(key_dir) / f"pair_{k:04d}.npy"


def images_digest(images: Images, batch_size: int = 4096) -> str:
    """sha256 of the images' shape and bytes (read batch by batch): ties a cache to exactly these images, in this order."""
    h = hashlib.sha256(repr(tuple(images.shape)).encode())
    for start in range(0, len(images), batch_size):
        h.update(np.ascontiguousarray(images[start : start + batch_size].detach().cpu().numpy()).data.cast("B"))
    return h.hexdigest()


def _generator(*parts: int | str) -> torch.Generator:
    """A CPU generator seeded from `parts` by a stable hash: ("views", seed, k) for pair/epoch k, which stands on
    its own; ("local", seed, epoch, step[, rank]) for a batch's multi-crop views."""
    return torch.Generator().manual_seed(int(fingerprint(*parts), 16) & (2**63 - 1))


def epoch_params(n: int, h: int, w: int, cfg: CacheViewsConfig, seed: int, index: int) -> tuple[ViewParams, ViewParams]:
    """The random parameters of both views of n images of h x w for pair/epoch `index`: drawn in chunks of
    cfg.batch_size images (view 1, then view 2, per chunk) from the generator of (seed, index)."""
    gen = _generator("views", int(seed), int(index))
    first, second = [], []
    for start in range(0, n, cfg.batch_size):
        b = min(cfg.batch_size, n - start)
        first.append(draw_params(b, h, w, cfg, gen))
        second.append(draw_params(b, h, w, cfg, gen))
    return ViewParams.cat(first), ViewParams.cat(second)


def cache_bytes(cfg: CacheViewsConfig, shape: tuple[int, ...]) -> int:
    """Bytes of a cached-mode view cache of images of `shape` (N, C, H, W): K pairs of 2 views of every image."""
    return cfg.num_pairs * 2 * int(np.prod(shape))


def _expected_meta(key: str, cfg: CacheViewsConfig, seed: int, images: Images) -> dict:
    return {
        "key": key,
        "mode": cfg.mode,
        "num_pairs": cfg.num_pairs,
        "shape": [2, *images.shape],
        "cfg": cfg.identity(),
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
    images = load_dataset(data_dir, "train").images  # rows read batch by batch from the store
    if len(images) == 0:
        raise DataError(f"{data_dir}: the train split is empty; nothing to augment")
    return write_views(images, cfg, cache_dir, seed, key, device)


def write_views(images: Images, cfg: CacheViewsConfig, cache_dir: str | Path, seed: int, key: str, device: str = "cpu") -> dict:
    """The view cache of `images` (uint8 (N, C, H, W)) under `cache_dir/<key>`: what `cache_views` does once it has
    read the train split. Returns the same summary."""
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    if not _KEY_DIR.match(key):
        raise ValueError(f"view cache key must be 16 hex digits, got {key!r}")
    key_dir = cache_dir / key
    size = cache_bytes(cfg, tuple(images.shape))
    if cfg.mode == "cached" and size > cfg.max_gib * 2**30:
        raise ConfigError(
            f"cache_views would write {size / 2**30:.1f} GiB ({cfg.num_pairs} pairs x 2 views x {len(images)} images), over "
            f"cache_views.max_gib={cfg.max_gib}; set cache_views.mode=online (views made per batch while training), lower "
            "cache_views.num_pairs, or raise cache_views.max_gib"
        )
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
                        n, _, h, w = images.shape
                        params = epoch_params(n, h, w, cfg, seed, k)
                        with npy_rows(pair_path(tmp, k), tuple(expected["shape"])) as write:
                            for p in params:  # view 1 of every image, then view 2
                                for start in range(0, n, cfg.batch_size):
                                    rows = slice(start, start + cfg.batch_size)
                                    write(apply_params(images[rows].to(device), p.take(rows), cfg).cpu().numpy())
                                    bar.update(min(cfg.batch_size, n - start))
                summary["views"] = total
            gen_seconds = time.perf_counter() - gen_start
            summary["images_per_s"] = summary["views"] / gen_seconds if summary["views"] else 0.0
            # only what the views are made from: the same views are the same bytes (timings go in the summary)
            write_json(tmp / META, {**expected, "device": str(device)})
    summary.update(hit=hit, evicted=_evict_others(cache_dir, key), bytes=_dir_bytes(key_dir), seconds=time.perf_counter() - t0)
    return summary


# what a batch's views are made from, as stored (`ViewProvider.read`): (cached views' rows | None, images' rows | None)
Rows = tuple[list[torch.Tensor] | None, torch.Tensor | None]


def _whole_views(kind: str) -> int:
    """Full-size views per image of a method's kind of views ("single", "pair", "multicrop": its two global ones)."""
    return 1 if kind == "single" else 2


class ViewProvider:
    """The views training sees, batch by batch, of `images` (uint8 (N, C, H, W) train images, in memory or rows
    of the store on disk).

    cached: epoch e reads its batch's rows of pair e % num_pairs from the cache written by `cache_views`;
    online: the batch's views are made on `device` from its rows of epoch e's parameters (`epoch_params`, from
    (seed, e)), so a run resumed at epoch e sees the same views as an uninterrupted one, and whichever batch an
    image falls in, its view is the same. Returned tensors are uint8 on `device`.
    """

    def __init__(
        self,
        cfg: CacheViewsConfig,
        images: Images,
        cache_dir: str | Path,
        seed: int,
        key: str,
        device: str | torch.device = "cpu",
    ):
        self.cfg, self.images, self.seed, self.device, self.key = cfg, images, int(seed), torch.device(device), key
        self.dir = Path(cache_dir) / key
        self._params: tuple[int, tuple[ViewParams, ViewParams]] | None = None  # (epoch, its parameters)
        self._pair: tuple[int, StoredImages] | None = None  # (pair number, its file)
        if cfg.mode == "cached":
            if not _is_hit(self.dir, _expected_meta(key, cfg, seed, images)):
                raise DataError(
                    f"view cache {self.dir} is missing or stale; run the cache_views stage "
                    f"(it must match these {len(images)} train images, cache_views settings and seed {seed})"
                )

    def epoch_params(self, epoch: int) -> tuple[ViewParams, ViewParams]:
        """Epoch `epoch`'s view parameters for every image (drawn once per epoch, kept until the next)."""
        if self._params is None or self._params[0] != epoch:
            n, _, h, w = self.images.shape
            self._params = (epoch, epoch_params(n, h, w, self.cfg, self.seed, epoch))
        return self._params[1]

    def read(self, epoch: int, idx: torch.Tensor, kind: str = "pair") -> Rows:
        """What the views of images[idx] are made from, as stored (uint8, CPU): (the cached views' rows, cached
        mode; else None) and (the images' rows, online mode and multi-crop's local views; else None). Only disk
        reads, no torch compute: a reader thread fetches the next step's rows while this one trains."""
        cached = None
        if self.cfg.mode == "cached":
            k = epoch % self.cfg.num_pairs
            if self._pair is None or self._pair[0] != k:
                self._pair = (k, StoredImages(pair_path(self.dir, k)))  # (2N, C, H, W): view 1 rows, then view 2
            pair = self._pair[1]
            cached = [pair[idx + v * len(self.images)] for v in range(_whole_views(kind))]
        images = self.images[idx] if self.cfg.mode == "online" or kind == "multicrop" else None
        return cached, images

    def batch(
        self,
        epoch: int,
        step: int,
        idx: torch.Tensor,
        kind: str = "pair",
        rows: Rows | None = None,
    ) -> list[torch.Tensor]:
        """The views of images[idx] for this step: [view 1] (`kind` "single"), [view 1, view 2] ("pair"), or the
        two views followed by `local_crops` small views ("multicrop"). `rows`: what `read(epoch, idx, kind)`
        returned, when it was read ahead; read now otherwise."""
        cached, stored = rows if rows is not None else self.read(epoch, idx, kind)
        images = None if stored is None else stored.to(self.device, non_blocking=True)
        if cached is not None:
            views = [v.to(self.device, non_blocking=True) for v in cached]
        else:
            assert images is not None  # online mode reads the images
            views = [apply_params(images, p.take(idx), self.cfg) for p in self.epoch_params(epoch)[: _whole_views(kind)]]
        if kind == "multicrop":
            views += self.local_views(epoch, step, idx, images)
        return views

    def local_views(self, epoch: int, step: int, idx: torch.Tensor, images: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Multi-crop's `local_crops` small views (uint8, local_size²) of images[idx] (`images`, when already read),
        drawn for this batch only, from a generator seeded from (seed, epoch, step): a resumed run draws the same ones."""
        cfg = self.cfg.model_copy(update={"crop_scale": self.cfg.local_crop_scale})
        parts = (self.seed, int(epoch), int(step)) + ((rank(),) if rank() else ())  # data-parallel ranks: their own draws
        gen = _generator("local", *parts)
        if images is None:
            images = self.images[idx].to(self.device)
        return [augment_batch(images, cfg, gen, out_size=cfg.local_size) for _ in range(cfg.local_crops)]
