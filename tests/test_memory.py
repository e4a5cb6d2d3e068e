"""Data larger than memory: ingest and a pretraining epoch finish under a memory limit far below the store's size.

A child process (tests/memory_job.py) imports everything, then limits its private writable memory (RLIMIT_DATA:
heap and anonymous maps) to what it holds plus HEADROOM_MB, checks that the limit binds (allocating the store's
size fails), and runs the ingest and pretrain stages' functions on a folder of real PNG files whose decoded store
is more than four times that headroom. Pretraining reads its batches from the store on disk and makes the views
per batch; a stage that loaded the train split, or an epoch of views, would die with MemoryError.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from PIL import Image

HEADROOM_MB = 256
IMAGES = 40_000  # 96x96 RGB: a 1.1 GB store, 4.3x the headroom
STEPS = 100  # of 16 images each, drawn from the whole train split (pretrain.max_steps_per_epoch)
JOB = Path(__file__).with_name("memory_job.py")


def _write(args: tuple[Path, int, int]) -> None:
    folder, start, stop = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)  # smooth colour fields: small PNGs, quick to decode
        Image.fromarray(small).resize((96, 96), Image.Resampling.BILINEAR).save(
            folder / f"class_{i % 4}" / f"{i:06d}.png", compress_level=1
        )


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("big_png")
    for c in range(4):
        (folder / f"class_{c}").mkdir()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_write, [(folder, s, min(IMAGES, s + 5000)) for s in range(0, IMAGES, 5000)]))
    return folder


def test_ingest_and_a_pretraining_epoch_run_on_a_store_four_times_the_memory_left_to_them(big_folder, tmp_path):
    # pyarrow's own allocator reserves about 1 GB of address space on first use (untouched: no RSS), which
    # RLIMIT_DATA counts as if it were used; the system allocator reserves only what it uses
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1", "ARROW_DEFAULT_MEMORY_POOL": "system"}
    proc = subprocess.run(
        [sys.executable, str(JOB), str(big_folder), str(tmp_path), str(HEADROOM_MB), str(STEPS)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["store_bytes"] > 4 * out["headroom_bytes"]
    assert out["store_held_under_limit"] is False  # the limit binds: the store's bytes cannot be held
    assert out["train_images"] > 0.7 * IMAGES
    trained = out["pretrain"]
    assert trained["epochs"] == 1 and np.isfinite(trained["final_loss"])
    # and the memory it used stayed small (RSS also counts memory-mapped file pages, which RLIMIT_DATA does not)
    assert out["rss_growth_bytes"] < out["headroom_bytes"]
