"""Frozen features of one small_cnn encoder read out at other pooled grids: kNN and linear probe on validation.

    python benchmarks/pool_readout.py --encoder models/encoder.pt [--data data] [--grids 1,2 1,2,4 1,7]

The last convolutional map is average-pooled to each grid of a set and concatenated (what `pretrain.pool`
sets); no retraining. kNN both ways: plain cosine and on standardised features (`evaluate.knn_standardize`).
Validation: `--val` stratified train images held out (benchmarks/validation.py, the same
ones as benchmarks/finetune_recipes.py); the other train images are the kNN bank and the probe's training set.
The test split is never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from validation import labelled_train_split

from ssl_components.backbones import load_encoder, normalize
from ssl_components.evaluation import knn_accuracy, linear_probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--val", type=int, default=10000)
    ap.add_argument("--grids", nargs="+", default=["1", "1,2", "1,3", "1,2,3", "1,2,4", "1,7"])
    args = ap.parse_args()

    torch.set_num_threads(1)  # many small probe steps: one thread is faster on 2 cores
    encoder = load_encoder(args.encoder)
    if not hasattr(encoder, "features"):
        raise SystemExit(f"{args.encoder}: not a small_cnn encoder; only small_cnn has pooled grids")
    x, y, val, bank = labelled_train_split(args.data, args.val)
    with torch.inference_mode():
        maps = torch.cat([encoder.features(normalize(x[s : s + 2048])) for s in range(0, len(x), 2048)])
    num_classes = int(y.max()) + 1
    print("| pooled grids | dims | kNN, plain cosine | kNN, standardised (the default) | linear probe |\n|---|---|---|---|---|")
    for grid in args.grids:
        sizes = [int(g) for g in grid.split(",")]
        f = torch.cat([F.adaptive_avg_pool2d(maps, s).flatten(1) for s in sizes], dim=1)
        plain, z = (knn_accuracy(f[bank], y[bank], f[val], y[val], 200, 0.1, num_classes, standardize=s) for s in (False, True))
        probe, _ = linear_probe(f[bank], y[bank], f[val], y[val], num_classes, 30, 0.01, 0)
        print(f"| {', '.join(map(str, sizes))} | {f.shape[1]:,} | {100 * plain:.2f} | {100 * z:.2f} | {100 * probe:.2f} |", flush=True)


if __name__ == "__main__":
    main()
