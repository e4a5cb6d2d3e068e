"""Ingest's cost as the data grows: time, images/s and peak memory on synthetic RGB image folders.

    python benchmarks/ingest_scaling.py --sizes 25000 100000 400000 --root /tmp/ingest_scaling

For each size: writes (once, kept under --root) a folder of N 64x64 RGB PNGs in 10 class folders, then runs the
ingest stage on it in a fresh process at image_size 64, channels 3, and prints one row: images, store size,
seconds, images/s, and the peak RSS of the ingest process beside what its imports alone take (torch among them:
ingest's own memory is the difference). `--workers 1` runs the
same with decoding in one process (the baseline: what ingest did before the pool), for the same sizes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZE = 64


def _write_part(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    folder, start, stop = args
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        out = folder / f"class_{i % 10}" / f"{i:07d}.png"
        if out.exists():
            continue
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)  # smooth colour fields: PNGs of ~6 KB, like photos' sizes
        Image.fromarray(small).resize((SIZE, SIZE), Image.Resampling.BILINEAR).save(out)


def make_folder(folder: Path, n: int, workers: int) -> Path:
    for c in range(10):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
    step = 5000
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(_write_part, [(folder, s, min(n, s + step)) for s in range(0, n, step)]))
    return folder


def measure(folder: Path, out: Path, workers: int) -> dict:
    """Run ingest in a child process; returns its summary, seconds, peak RSS and the RSS after its imports."""
    code = f"""
import importlib, json, resource, sys, time
m = importlib.import_module("ssl_components.data.ingest")  # the module: ssl_components.data re-exports the function
if {workers} == 1:
    m.POOL_MIN_IMAGES = 10**12
from ssl_components.config import IngestConfig
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
s = m.ingest(IngestConfig(source="folder", path={str(folder)!r}, image_size={SIZE}, channels=3), {str(out)!r})
s["seconds"] = time.perf_counter() - t
s["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
s["imports_rss_mb"] = baseline
print(json.dumps(s))
"""
    env = {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/ingest_scaling"))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1], help="0: ingest's default (every core); 1: one process")
    parser.add_argument("--keep-stores", action="store_true")
    args = parser.parse_args()
    print("| images | store MB | decode | seconds | images/s | peak RSS MB | of which imports | ingest's own |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        t = time.perf_counter()
        folder = make_folder(args.root / f"images_{n}", n, 2)
        print(f"<!-- folder of {n} images ready in {time.perf_counter() - t:.0f} s -->", flush=True)
        for workers in args.workers:
            out = args.root / f"data_{n}_{workers}"
            s = measure(folder, out, workers)
            store_mb = (out / "store.npy").stat().st_size / 2**20
            how = "1 process" if workers == 1 else "every core"
            print(
                f"| {n:,} | {store_mb:,.0f} | {how} | {s['seconds']:.1f} | {n / s['seconds']:,.0f} | "
                f"{s['peak_rss_mb']:,.0f} | {s['imports_rss_mb']:,.0f} | {s['peak_rss_mb'] - s['imports_rss_mb']:,.0f} |",
                flush=True,
            )
            if not args.keep_stores:
                subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"<!-- ru_maxrss of this benchmark process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB -->")


if __name__ == "__main__":
    main()
