"""ingest on real tiny image folders and manifests: manifest schema, labels, splits, store, broken files."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from imagefactory import (
    flat_folder,
    image_folder,
    pixels,
    write_corrupt_png,
    write_empty,
    write_png,
    write_text_as_image,
)
from PIL import Image

from ssl_components.config import IngestConfig
from ssl_components.data.dataset import read_manifest
from ssl_components.data.ingest import MANIFEST_COLUMNS, content_split, ingest
from ssl_components.errors import DataError
from ssl_components.io import read_json


def run_ingest(path, data_dir, source="folder", **kw):
    summary = ingest(IngestConfig(source=source, path=path, image_size=16, channels=1, **kw), data_dir)
    return summary, read_manifest(data_dir), np.load(data_dir / "store.npy")


def by_name(manifest):
    return manifest.set_index(manifest["path"].map(lambda p: p.rsplit("/", 1)[-1]))


def test_split_folders_give_manifest_labels_splits_and_store(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=10, splits=["train", "test"], size=16)
    summary, m, store = run_ingest(root, tmp_path / "data")

    assert list(m.columns) == MANIFEST_COLUMNS
    assert str(m["width"].dtype) == str(m["height"].dtype) == str(m["label"].dtype) == "Int64"
    assert m["id"].map(type).eq(str).all() and m["id"].is_unique
    assert m["decode_error"].isna().all()
    assert (m["width"] == 16).all() and (m["mode"] == "L").all()
    assert store.shape == (40, 1, 16, 16) and store.dtype == np.uint8
    assert summary["train"] == summary["test"] == 20 and summary["classes"] == 2
    # labels from class folders (sorted names: cat=0, dog=1), splits from the top folders
    assert (m["label"] == m["path"].str.contains("/dog/").astype(int)).all()
    assert (m["split"] == np.where(m["path"].str.contains("/test/"), "test", "train")).all()
    # a 16x16 image is stored unresized: its pixels come back exactly
    row = m.index[m["path"].str.endswith("test/dog/003.png")][0]
    expected = np.asarray(Image.open(m.at[row, "path"]))
    assert np.array_equal(store[row, 0], expected)


def test_class_folders_without_splits_get_a_test_share_chosen_by_content(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=150)
    _, m, _ = run_ingest(root, tmp_path / "data", test_fraction=0.2)
    assert (m["split"] == m["sha256"].map(lambda sha: content_split(sha, 0.2))).all()
    share = (m["split"] == "test").mean()
    assert 0.12 < share < 0.28  # about test_fraction of 300 images


def test_a_growing_folder_keeps_every_images_split_and_every_class_id(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=40)
    data = tmp_path / "data"
    _, before, _ = run_ingest(root, data)
    # new images arrive: more cats and dogs, and a new class that sorts first
    for c, name in enumerate(("cat", "dog")):
        for i in range(20):
            write_png(root / name / f"new_{i:03d}.png", seed=50_000 + 1000 * c + i)
    image_folder(root, classes=("aardvark",), per_class=20, seed=90_000)
    _, after, _ = run_ingest(root, data)
    assert len(after) == len(before) + 20 + 40
    old = after.set_index("id").loc[before["id"]]
    assert (old["split"].to_numpy() == before["split"].to_numpy()).all()  # no image moved between train and test
    assert (old["label"].to_numpy() == before["label"].to_numpy()).all()  # cat is still 0, dog still 1
    assert read_json(data / "classes.json")["classes"] == ["cat", "dog", "aardvark"]
    assert set(after.loc[after["path"].str.contains("/aardvark/"), "label"]) == {2}


def test_unlabelled_images_always_train(tmp_path):
    root = flat_folder(tmp_path / "imgs", n=40)
    _, m, _ = run_ingest(root, tmp_path / "data", test_fraction=0.5)
    assert set(m["split"]) == {"train"}


def test_train_val_test_folders_are_splits_never_classes(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=("cat", "dog"), per_class=3, splits=["train", "val", "test"])
    summary, m, _ = run_ingest(root, tmp_path / "data")
    assert read_json(tmp_path / "data" / "classes.json")["classes"] == ["cat", "dog"]
    assert summary["train"] == summary["val"] == summary["test"] == 6
    assert (m["split"] == m["id"].str.split("/").str[0]).all()
    valid = image_folder(tmp_path / "other", classes=("cat",), per_class=2, splits=["train", "valid", "test"])
    assert set(run_ingest(valid, tmp_path / "data2")[1]["split"]) == {"train", "val", "test"}


def test_split_folders_beside_class_folders_are_a_clear_error(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=("cat",), per_class=2, splits=["train", "test"])
    image_folder(root, classes=("dog",), per_class=2, seed=70_000)  # root/dog/... next to root/train, root/test
    with pytest.raises(DataError, match=r"has split folders \(test, train\) beside dog; put every image under train/, val/ or test/"):
        run_ingest(root, tmp_path / "data")


def test_links_that_leave_the_folder_are_refused_unless_allowed(tmp_path):
    root = image_folder(tmp_path / "imgs", classes=("cat",), per_class=3)
    outside = tmp_path / "elsewhere"
    write_png(outside / "secret.png", seed=5)
    write_png(outside / "dir" / "more.png", seed=6)
    (root / "cat" / "link.png").symlink_to(outside / "secret.png")
    (root / "cat" / "linked_dir").symlink_to(outside / "dir")
    (root / "cat" / "inside.png").symlink_to(root / "cat" / "000.png")  # stays inside: read as usual
    summary, m, _ = run_ingest(root, tmp_path / "data")
    refused = m[m["decode_error"].fillna("").str.startswith("link leaves the source folder")]
    assert sorted(refused["id"]) == ["cat/link.png", "cat/linked_dir"] and summary["refused_links"] == 2
    assert refused["sha256"].isna().all()  # never opened
    assert "set ingest.follow_links: true" in refused["decode_error"].iloc[0]
    assert pd.isna(m.set_index("id").at["cat/inside.png", "decode_error"])
    _, allowed, _ = run_ingest(root, tmp_path / "data2", follow_links=True)
    assert allowed["decode_error"].isna().all() and "cat/linked_dir/more.png" in set(allowed["id"])


def test_flat_folder_is_unlabeled(tmp_path):
    root = flat_folder(tmp_path / "imgs", n=10)
    summary, m, store = run_ingest(root, tmp_path / "data")
    assert m["label"].isna().all() and summary["labeled"] == 0
    assert store.shape == (10, 1, 16, 16)


def test_rgba_and_16bit_are_decoded_with_their_mode_recorded(tmp_path):
    root = tmp_path / "imgs"
    write_png(root / "rgba.png", seed=1, mode="RGBA")
    write_png(root / "deep.png", seed=2, mode="I;16", size=16)
    write_png(root / "plain.png", seed=3)
    _, m, store = run_ingest(root, tmp_path / "data")
    m = by_name(m)
    assert m["decode_error"].isna().all()
    assert m.at["rgba.png", "mode"] == "RGBA"
    assert m.at["deep.png", "mode"].startswith("I;16")
    deep = store[m.index.get_loc("deep.png"), 0]
    assert deep.min() == 0 and deep.max() == 255  # 16-bit range scaled to 8 bits, not clipped to white


def test_broken_files_get_a_decode_error_not_an_exception(tmp_path):
    root = flat_folder(tmp_path / "imgs", n=3)
    write_corrupt_png(root / "corrupt.png")
    write_empty(root / "zero.png")
    write_text_as_image(root / "text.png")
    summary, m, store = run_ingest(root, tmp_path / "data")
    m = by_name(m)
    assert summary["decode_errors"] == 3
    assert m.at["corrupt.png", "decode_error"].startswith("corrupt image")
    assert m.at["zero.png", "decode_error"] == "empty file (0 bytes)"
    assert m.at["text.png", "decode_error"] == "not an image PIL can read"
    assert m.loc[["img000.png", "img001.png", "img002.png"], "decode_error"].isna().all()
    assert not store[m.index.get_loc("zero.png")].any()


def test_empty_folder_is_a_data_error(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "notes.txt").write_text("no images here")
    with pytest.raises(DataError, match="no image files"):
        run_ingest(tmp_path / "imgs", tmp_path / "data")


def test_csv_manifest_with_relative_paths(tmp_path):
    src = tmp_path / "src"
    rows = []
    for i in range(6):
        write_png(src / "pics" / f"{i}.png", seed=i, size=16)
        rows.append({"path": f"pics/{i}.png", "label": i % 2, "split": "test" if i >= 4 else "train"})
    pd.DataFrame(rows).to_csv(src / "list.csv", index=False)
    _, m, store = run_ingest(src / "list.csv", tmp_path / "data", source="manifest")
    assert m["decode_error"].isna().all()
    assert m["label"].tolist() == [0, 1, 0, 1, 0, 1]
    assert m["split"].tolist() == ["train"] * 4 + ["test"] * 2
    assert np.array_equal(store[5, 0], pixels(5, 16))


def test_manifest_with_a_misspelt_split_names_the_row(tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "list.csv").write_text("path,split\na.png,train\na.png,trian\n")
    with pytest.raises(DataError, match=r"row 3: split 'trian'"):
        run_ingest(tmp_path / "list.csv", tmp_path / "data", source="manifest")


def test_manifest_listing_a_path_twice_names_both_rows(tmp_path):
    write_png(tmp_path / "a.png")
    (tmp_path / "list.csv").write_text("path,label\na.png,0\nb.png,1\na.png,1\n")
    with pytest.raises(DataError, match=r"row 4: path 'a.png' is listed twice \(first at row 2\)"):
        run_ingest(tmp_path / "list.csv", tmp_path / "data", source="manifest")


def test_manifest_without_path_column(tmp_path):
    (tmp_path / "list.csv").write_text("file,label\na.png,0\n")
    with pytest.raises(DataError, match="no 'path' column"):
        run_ingest(tmp_path / "list.csv", tmp_path / "data", source="manifest")


def test_decoding_on_every_core_gives_the_same_store_and_manifest_as_one_process(tmp_path, monkeypatch):
    ingest_module = sys.modules[ingest.__module__]  # the module (ssl_components.data re-exports the function as `ingest`)

    root = flat_folder(tmp_path / "imgs", n=40, size=20)
    write_corrupt_png(root / "img015_corrupt.png")  # a failure in the middle keeps its row and its place
    monkeypatch.setattr(ingest_module, "BLOCK", 8)  # 6 blocks
    monkeypatch.setattr(ingest_module, "POOL_MIN_IMAGES", 10**9)
    _, serial_m, serial = run_ingest(root, tmp_path / "serial")
    monkeypatch.setattr(ingest_module, "POOL_MIN_IMAGES", 0)
    monkeypatch.setattr(ingest_module, "decode_workers", lambda: 2)
    spawned = []
    real_pool = ingest_module.ProcessPoolExecutor
    monkeypatch.setattr(ingest_module, "ProcessPoolExecutor", lambda *a, **kw: spawned.append(a) or real_pool(*a, **kw))
    _, pool_m, pooled = run_ingest(root, tmp_path / "pool")
    assert spawned == [(2,)]  # the pool path ran, with 2 worker processes
    assert np.array_equal(serial, pooled) and len(pooled) == 41
    pd.testing.assert_frame_equal(serial_m, pool_m)
    assert by_name(pool_m).at["img015_corrupt.png", "decode_error"].startswith("corrupt image")


def test_large_jpegs_are_decoded_at_reduced_size_close_to_a_full_decode(tmp_path):
    from ssl_components.decode import decode_file, resize, to_uint8

    y, x = np.mgrid[0:1200, 0:1600]
    smooth = np.stack([(x / 1600 * 255), (y / 1200 * 255), ((x + y) / 2800 * 255)], axis=-1).astype(np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    draft, info = decode_file(str(path), 64, 3)
    assert (info["width"], info["height"], info["mode"]) == (1600, 1200, "RGB")  # the file's own size is recorded
    with Image.open(path) as img:
        img.draft("RGB", (64, 64))
        assert img.size == (200, 150)  # 1/8 scale in the DCT domain: both sides still >= 64
    with Image.open(path) as img:
        img.load()  # no draft: the whole 1600x1200 image, then the same resize
        full = np.asarray(resize(to_uint8(img, 3), 64)).transpose(2, 0, 1)
    assert draft.shape == full.shape == (3, 64, 64)
    assert np.abs(draft.astype(int) - full.astype(int)).mean() < 2.0  # grey levels, of 255
