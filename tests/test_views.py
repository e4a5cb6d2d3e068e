"""cache_views and ViewProvider on a tiny real data dir (ingested from PNG files)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_components.config import CacheViewsConfig, IngestConfig
from ssl_components.data.dataset import load_dataset
from ssl_components.data.ingest import ingest
from ssl_components.errors import ConfigError, DataError
from ssl_components.views import ViewProvider, cache_views

CFG = CacheViewsConfig(num_pairs=3, batch_size=7)
K1, K2, K3 = "00000000000000a1", "00000000000000b2", "00000000000000c3"  # keys are the pipeline's record keys


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 4)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    data = tmp_path_factory.mktemp("data")
    ingest(IngestConfig(source="folder", path=root, image_size=16), data)
    (data / "quarantine.csv").write_text("id,path,reason\n")
    return data


def _files(path):
    return sorted((p.relative_to(path), p.stat().st_mtime_ns) for p in path.rglob("*") if p.is_file())


def test_generate_then_hit(data_dir, tmp_path):
    cache = tmp_path / "cache"
    first = cache_views(CFG, data_dir, cache, seed=0, key=K1)
    assert first["hit"] is False and first["pairs"] == 3 and first["images"] == 20 and first["views"] == 120
    key_dir = cache / first["key"]
    assert first["key"] == K1
    for k in range(3):
        pair = np.load(key_dir / f"pair_{k:04d}.npy")
        assert pair.dtype == np.uint8 and pair.shape == (2, 20, 1, 16, 16)
    meta = json.loads((key_dir / "meta.json").read_text())
    assert meta["key"] == first["key"] and meta["num_pairs"] == 3 and meta["shape"] == [2, 20, 1, 16, 16]
    assert first["bytes"] > 3 * 2 * 20 * 256
    before = _files(cache)
    second = cache_views(CFG, data_dir, cache, seed=0, key=K1)
    assert second["hit"] is True and second["key"] == first["key"] and _files(cache) == before


def test_a_key_is_sixteen_hex_digits(data_dir, tmp_path):
    with pytest.raises(ValueError, match="16 hex digits"):
        cache_views(CFG, data_dir, tmp_path / "cache", seed=0, key="../../etc")


def test_a_new_key_evicts_the_old_one(data_dir, tmp_path):
    cache = tmp_path / "cache"
    cache_views(CFG, data_dir, cache, seed=0, key=K1)
    cache_views(CFG.model_copy(update={"flip_p": 0.1}), data_dir, cache, seed=0, key=K2)
    last = cache_views(CFG.model_copy(update={"flip_p": 0.1}), data_dir, cache, seed=1, key=K3)
    assert last["evicted"] == [K2]
    assert sorted(p.name for p in cache.iterdir()) == [K3]


def test_same_key_with_other_settings_is_regenerated_not_reused(data_dir, tmp_path):
    cache = tmp_path / "cache"
    cache_views(CFG, data_dir, cache, seed=0, key=K1)
    again = cache_views(CFG.model_copy(update={"flip_p": 0.1}), data_dir, cache, seed=0, key=K1)
    assert again["hit"] is False  # meta.json records the settings it was made with


def test_quarantine_change_regenerates(data_dir, tmp_path):
    cache = tmp_path / "cache"
    first = cache_views(CFG, data_dir, cache, seed=0, key=K1)
    train_id = load_dataset(data_dir, "train").ids[0]
    (data_dir / "quarantine.csv").write_text(f"id,path,reason\n{train_id},x,bad\n")
    try:
        second = cache_views(CFG, data_dir, cache, seed=0, key=K1)
        assert second["hit"] is False and second["images"] == 19
        assert np.load(cache / second["key"] / "pair_0000.npy").shape[1] == 19
    finally:
        (data_dir / "quarantine.csv").write_text("id,path,reason\n")
    assert first["key"] == second["key"]  # the caller's key did not move; the contents follow the images


def test_online_mode_writes_no_shards(data_dir, tmp_path):
    cache = tmp_path / "cache"
    summary = cache_views(CFG.model_copy(update={"mode": "online"}), data_dir, cache, seed=0, key=K1)
    assert summary["mode"] == "online" and summary["views"] == 0
    assert [p.name for p in (cache / summary["key"]).iterdir()] == ["meta.json"]
    assert json.loads((cache / summary["key"] / "meta.json").read_text())["mode"] == "online"


def test_provider_cached_returns_pair_epoch_mod_k_rows_of_each_batch(data_dir, tmp_path):
    cache = tmp_path / "cache"
    key = cache_views(CFG, data_dir, cache, seed=0, key=K1)["key"]
    images = load_dataset(data_dir, "train").images
    provider = ViewProvider(CFG, images, cache, 0, K1)
    idx = torch.tensor([17, 3, 3, 0, 9])  # any order, repeats allowed
    for epoch in (0, 1, 5):
        pair = np.load(cache / key / f"pair_{epoch % 3:04d}.npy")
        v1, v2 = provider.batch(epoch, 0, idx)
        assert v1.dtype == torch.uint8 and v1.shape == (5, *images.shape[1:])
        assert np.array_equal(v1.numpy(), pair[0][idx]) and np.array_equal(v2.numpy(), pair[1][idx])
    assert not torch.equal(provider.batch(0, 0, idx)[0], provider.batch(1, 0, idx)[0])
    assert len(provider.batch(0, 0, idx, "single")) == 1
    # online epoch k makes exactly what cached pair k holds, for whichever rows a batch asks for
    online = ViewProvider(CFG.model_copy(update={"mode": "online"}), images, cache, 0, K2)
    every = torch.arange(len(images))
    assert all(torch.equal(a, b) for a, b in zip(online.batch(1, 0, every), provider.batch(1, 0, every)))
    assert all(torch.equal(a, b) for a, b in zip(online.batch(1, 7, idx), provider.batch(1, 0, idx)))


def test_provider_online_is_deterministic_per_epoch_and_independent_of_the_batch(data_dir, tmp_path):
    images = load_dataset(data_dir, "train").images
    cfg = CFG.model_copy(update={"mode": "online"})
    a = ViewProvider(cfg, images, tmp_path / "nothing", 0, "v1")
    b = ViewProvider(cfg, images, tmp_path / "nothing", 0, "v1")
    every = torch.arange(len(images))
    v1, v2 = a.batch(4, 0, every)
    assert v1.shape == images.shape and v1.dtype == torch.uint8
    assert torch.equal(v1, b.batch(4, 0, every)[0]) and torch.equal(v2, b.batch(4, 0, every)[1])
    assert not torch.equal(v1, a.batch(5, 0, every)[0]) and not torch.equal(v1, v2)
    assert not torch.equal(v1, ViewProvider(cfg, images, tmp_path, 1, "v1").batch(4, 0, every)[0])
    # an image's view in an epoch does not depend on the batch it falls in (a resumed run, another process count)
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    parts = [b.batch(4, step, rows)[0] for step, rows in enumerate(perm.split(6))]
    assert torch.equal(torch.cat(parts), v1[perm])


def test_cached_mode_over_its_size_bound_is_refused_before_writing(data_dir, tmp_path):
    cache = tmp_path / "cache"
    bound = 3 * 2 * 20 * 256 / 2**30  # three pairs of 20 images of 16x16: just over this
    with pytest.raises(ConfigError, match=r"cache_views would write .* over cache_views.max_gib.*mode=online") as err:
        cache_views(CFG.model_copy(update={"max_gib": bound * 0.99}), data_dir, cache, seed=0, key=K1)
    assert "\n" not in str(err.value)
    assert not cache.exists() or not any(cache.iterdir())
    assert cache_views(CFG.model_copy(update={"max_gib": bound}), data_dir, cache, seed=0, key=K1)["pairs"] == 3
    # the bound is a guard, not part of the views: changing it keeps the cache
    assert cache_views(CFG.model_copy(update={"max_gib": 50.0}), data_dir, cache, seed=0, key=K1)["hit"] is True


def test_provider_refuses_missing_or_stale_cache(data_dir, tmp_path):
    images = load_dataset(data_dir, "train").images
    with pytest.raises(DataError, match="missing or stale; run the cache_views stage"):
        ViewProvider(CFG, images, tmp_path / "cache", 0, K1)
    cache_views(CFG, data_dir, tmp_path / "cache", seed=0, key=K1)
    ViewProvider(CFG, images, tmp_path / "cache", 0, K1)  # matches
    with pytest.raises(DataError, match="missing or stale"):
        ViewProvider(CFG, images, tmp_path / "cache", 0, K2)  # made for other inputs or code
    with pytest.raises(DataError, match="missing or stale"):
        ViewProvider(CFG, images[:-1], tmp_path / "cache", 0, K1)  # different images
    with pytest.raises(DataError, match="missing or stale"):
        ViewProvider(CFG, images, tmp_path / "cache", 1, K1)  # different seed


def test_multicrop_local_views_are_small_per_batch_and_reproducible(tmp_path):
    images = torch.randint(0, 256, (10, 1, 16, 16), dtype=torch.uint8)
    cfg = CacheViewsConfig(mode="online", local_crops=3, local_size=8, local_crop_scale=(0.1, 0.3))
    provider = ViewProvider(cfg, images, tmp_path, 0, "v")
    idx = torch.tensor([1, 4, 7])
    views = provider.local_views(2, 5, idx)
    assert len(views) == 3 and all(v.shape == (3, 1, 8, 8) and v.dtype == torch.uint8 for v in views)
    again = provider.local_views(2, 5, idx)  # what a resumed run draws for the same epoch and step
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert not torch.equal(views[0], provider.local_views(2, 6, idx)[0])
    assert not torch.equal(views[0], views[1])


@pytest.mark.parametrize("mode", ["cached", "online"])
def test_views_of_rows_read_ahead_in_a_thread_equal_views_read_at_the_step(data_dir, tmp_path, mode):
    """Training reads step s + 1's rows in a reader thread (`read`) while step s runs; `batch(..., rows)` must
    make exactly the views it makes when it reads the rows itself, for every kind of views."""
    from concurrent.futures import ThreadPoolExecutor

    cfg = CFG.model_copy(update={"mode": mode, "local_crops": 2, "local_size": 8})
    cache = tmp_path / "cache"
    cache_views(cfg, data_dir, cache, seed=0, key=K1)
    images = load_dataset(data_dir, "train").images  # rows of the store on disk
    provider = ViewProvider(cfg, images, cache, 0, K1)
    idx = torch.tensor([5, 0, 19, 3])
    with ThreadPoolExecutor(1) as reader:
        for kind, count in (("single", 1), ("pair", 2), ("multicrop", 4)):
            cached, stored = reader.submit(provider.read, 4, idx, kind).result()
            assert (cached is not None) == (mode == "cached")
            assert (stored is not None) == (mode == "online" or kind == "multicrop")
            ahead = provider.batch(4, 2, idx, kind, (cached, stored))
            now = provider.batch(4, 2, idx, kind)
            assert len(ahead) == len(now) == count
            assert all(a.dtype == torch.uint8 and torch.equal(a, b) for a, b in zip(ahead, now))
