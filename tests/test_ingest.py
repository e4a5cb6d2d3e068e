"""ingest on real tiny image folders and manifests: manifest schema, labels, splits, store, broken files."""

from __future__ import annotations

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
from ssl_components.data.ingest import MANIFEST_COLUMNS, ingest
from ssl_components.errors import DataError


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


def test_class_folders_without_splits_get_a_stratified_test_share(tmp_path):
    root = image_folder(tmp_path / "imgs", per_class=10)
    _, m, _ = run_ingest(root, tmp_path / "data", test_fraction=0.2)
    assert set(m["split"]) == {"train", "test"}
    assert m.groupby("label")["split"].apply(lambda s: (s == "test").sum()).tolist() == [2, 2]


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


def test_manifest_without_path_column(tmp_path):
    (tmp_path / "list.csv").write_text("file,label\na.png,0\n")
    with pytest.raises(DataError, match="no 'path' column"):
        run_ingest(tmp_path / "list.csv", tmp_path / "data", source="manifest")
