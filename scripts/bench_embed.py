"""Throughput of `sslpipe embed` on Fashion-MNIST images written as PNG files.

    .venv/bin/python scripts/bench_embed.py --images 10000

1. writes the first N of the 70,000 Fashion-MNIST images (train, then test) as PNG files,
   WORKDIR/images/<split>/class_<label>/<index>.png (kept for the next run when the count matches);
2. unless --tracking-uri is given, registers an encoder of this project's `quick` architecture (params.yaml's
   pretrain.backbone and pretrain.width) by running the real pipeline in WORKDIR/project on a small
   Fashion-MNIST subset for one epoch: throughput depends on the architecture, not on how well it is trained;
3. runs `python -m flows.cli embed WORKDIR/images --out WORKDIR/embeddings.parquet` as a subprocess, like a
   user, and prints its own throughput figure (decoding + encoding, model loading excluded), the end-to-end
   one (process start, imports, model loading and writing included) and the torch thread count.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "GX_ANALYTICS_ENABLED": "false", "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "1"}
SUMMARY = re.compile(r"embedded (\d+) of (\d+) images .*; ([\d,.]+) images/s on (\S+), (\d+) threads")


def write_pngs(root: Path, n: int) -> int:
    """The first n Fashion-MNIST images as PNG files under root; returns how many files there are."""
    import numpy as np
    from PIL import Image

    from ssl_components.data.sources import fashion_mnist

    marker = root / ".count"
    if marker.is_file() and marker.read_text().strip() == str(n):
        return n
    table = fashion_mnist(ROOT / "data" / "raw")
    rows = table.rows.iloc[:n]
    assert table.pixels is not None
    for i, (split, label) in enumerate(zip(rows["split"], rows["label_name"])):
        out = root / split / f"class_{label}" / f"{i:05d}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(table.pixels[i]), mode="L").save(out)
    marker.write_text(str(n))
    return len(rows)


def register_quick_encoder(project: Path) -> str:
    """Run the pipeline once (quick architecture, 1 epoch, 2,000 images) in `project`; its tracking URI."""
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"].update(max_images_per_split=1000)
    raw["cache_views"].update(num_pairs=1)
    raw["pretrain"].update(epochs=1, warmup_epochs=0)
    raw["evaluate"].update(knn_k=20, probe_epochs=2, finetune_epochs=1, finetune_min_steps=0, label_fractions=[0.5], embedding_points=100)
    project.mkdir(parents=True, exist_ok=True)
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    db = project / "mlflow" / "mlflow.db"
    if not db.is_file():
        print(f"registering a {raw['pretrain']['backbone']} (width {raw['pretrain']['width']}) encoder in {project} ...", flush=True)
        subprocess.run([sys.executable, "-m", "flows.cli", "run"], cwd=project, env=ENV, check=True, capture_output=True)
    return f"sqlite:///{db}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10000, help="how many of the 70,000 images (default: 10,000)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sslpipe-bench-embed")
    parser.add_argument("--tracking-uri", default=None, help="embed with this registry's model instead of registering one")
    parser.add_argument("--model", default="champion")
    parser.add_argument("--threads", type=int, default=None, help="passed to embed (default: embed's own default)")
    args = parser.parse_args()

    images = args.workdir / "images"
    n = write_pngs(images, args.images)
    uri = args.tracking_uri or register_quick_encoder(args.workdir / "project")
    out = args.workdir / "embeddings.parquet"
    cmd = [sys.executable, "-m", "flows.cli", "embed", str(images), "--out", str(out), "--tracking-uri", uri]
    cmd += ["--model", args.model, "--batch-size", str(args.batch_size), "--params", str(ROOT / "params.yaml")]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"embed failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ''}")
    found = SUMMARY.search(proc.stdout)
    if found is None:
        sys.exit(f"embed printed no summary line: {proc.stdout!r}")
    embedded, total, rate, device, threads = found.groups()
    print(f"command: {' '.join(cmd)}")
    print(f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), device {device}")
    print(f"images: {embedded} embedded of {total} PNG files ({n} written), batch size {args.batch_size}")
    print(f"torch threads: {threads}")
    print(f"embed loop (decode + encode): {rate} images/s")
    print(f"end to end (process start, imports, model load, write): {wall:.1f} s, {int(embedded) / wall:,.0f} images/s")


if __name__ == "__main__":
    main()
