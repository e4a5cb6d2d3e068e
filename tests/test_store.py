"""StoredImages: rows of a .npy store read from disk when indexed, as the in-memory array would give them."""

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_components.data.store import StoredImages, take_rows
from ssl_components.errors import DataError
from ssl_components.io import npy_rows


@pytest.fixture
def store(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (50, 3, 5, 4), dtype=np.uint8)
    path = tmp_path / "store.npy"
    with npy_rows(path, arr.shape) as write:  # written in blocks, as ingest writes it
        write(arr[:17])
        write(arr[17:])
    return path, arr


def test_every_kind_of_index_reads_what_the_array_holds(store):
    path, arr = store
    images = StoredImages(path)
    assert len(images) == 50 and images.shape == torch.Size((50, 3, 5, 4)) and images.dtype == torch.uint8
    idx = np.array([49, 0, 7, 7, 8, 9, 3])  # unsorted, repeated, with a run of consecutive rows
    assert np.array_equal(images[idx].numpy(), arr[idx])
    assert np.array_equal(images[torch.from_numpy(idx)].numpy(), arr[idx])
    assert np.array_equal(images[10:23].numpy(), arr[10:23])
    assert np.array_equal(images[5].numpy(), arr[5])
    mask = np.arange(50) % 3 == 0
    assert np.array_equal(images[mask].numpy(), arr[mask])
    assert images[np.array([], dtype=np.int64)].shape == (0, 3, 5, 4)
    with pytest.raises(IndexError):
        images[np.array([50])]


def test_chosen_rows_compose_and_read_nothing_until_indexed(store):
    path, arr = store
    rows = np.array([40, 2, 30, 31, 32, 5])
    chosen = take_rows(StoredImages(path), rows)
    assert isinstance(chosen, StoredImages) and len(chosen) == 6
    again = chosen.take(torch.tensor([5, 0, 3]))
    assert np.array_equal(again.load().numpy(), arr[rows][[5, 0, 3]])
    assert np.array_equal(torch.cat([chosen[s : s + 4] for s in range(0, len(chosen), 4)]).numpy(), arr[rows])
    tensor = torch.from_numpy(arr)
    assert torch.equal(take_rows(tensor, torch.tensor([1, 2])), tensor[[1, 2]])  # a tensor stays a tensor


def test_rows_are_read_not_memory_mapped(store):
    path, _ = store
    images = StoredImages(path)
    images[np.arange(0, 50, 2)]
    maps = Path("/proc/self/maps").read_text()
    assert str(path) not in maps  # a mapped store would grow the process's memory with every row it touched


def test_a_pickled_selection_reads_the_same_rows_in_another_process(store):
    path, arr = store
    chosen = StoredImages(path).take(np.array([3, 1]))
    copy = pickle.loads(pickle.dumps(chosen))
    assert np.array_equal(copy[:].numpy(), arr[[3, 1]])


def test_a_truncated_or_foreign_file_is_a_one_line_error(store, tmp_path):
    path, _ = store
    short = tmp_path / "short.npy"
    short.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="shorter than its header says.*re-run") as err:
        StoredImages(short)
    assert "\n" not in str(err.value)
    floats = tmp_path / "floats.npy"
    np.save(floats, np.zeros((2, 1, 2, 2), dtype=np.float32))
    with pytest.raises(DataError, match="expected C-ordered uint8 images"):
        StoredImages(floats)
