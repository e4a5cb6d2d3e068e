"""Frozen features of one small_cnn encoder read out at other pooled grids: kNN and linear probe on validation.

    python benchmarks/pool_readout.py --encoder models/encoder.pt [--data data] [--grids 1,2 1,2,4 1,7]
        [--knn-t 0.02 0.1] [--baselines]

The last convolutional map is average-pooled to each grid of a set and concatenated (what `pretrain.pool`
sets); no retraining. kNN (k=200) both ways, plain cosine and on standardised features (`evaluate.knn_standardize`),
at each vote temperature of `--knn-t`; `--baselines` adds raw pixels and a random-init encoder (grids as given).
Validation: `--val` stratified train images held out (benchmarks/validation.py, the same
ones as benchmarks/finetune_recipes.py); the other train images are the kNN bank and the probe's training set.
The test split is never read.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from validation import labelled_train_split

from ssl_components.backbones import load_encoder, normalize
from ssl_components.evaluation import knn_accuracy, linear_probe, random_init_like, raw_pixel_features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--val", type=int, default=10000)
    ap.add_argument("--grids", nargs="+", default=["1", "1,2", "1,3", "1,2,3", "1,2,4", "1,7"])
    ap.add_argument("--knn-t", type=float, nargs="+", default=[0.02, 0.1], help="kNN vote temperatures")
    ap.add_argument("--baselines", action="store_true", help="also raw pixels and a random-init encoder")
    args = ap.parse_args()

    torch.set_num_threads(1)  # many small probe steps: one thread is faster on 2 cores
    encoder = load_encoder(args.encoder)
    if not hasattr(encoder, "features"):
        raise SystemExit(f"{args.encoder}: not a small_cnn encoder; only small_cnn has pooled grids")
    x, y, val, bank = labelled_train_split(args.data, args.val)
    encoders = {"SSL": encoder}
    if args.baselines:
        encoders["random init"] = random_init_like(cast(dict[str, Any], encoder.meta), 0).eval()  # BatchNorm: running statistics
    num_classes = int(y.max()) + 1
    knn_cols = [f"kNN T={t:g} {way}" for way in ("plain", "standardised") for t in args.knn_t]
    print("| features | pooled grids | dims | " + " | ".join(knn_cols) + " | linear probe |")
    print("|---" * (len(knn_cols) + 4) + "|")

    def row(name: str, grid: str, f: torch.Tensor) -> None:
        knn = [
            knn_accuracy(f[bank], y[bank], f[val], y[val], 200, t, num_classes, standardize=z) for z in (False, True) for t in args.knn_t
        ]
        probe, _ = linear_probe(f[bank], y[bank], f[val], y[val], num_classes, 30, 0.01, 0)
        cells = " | ".join(f"{100 * a:.2f}" for a in knn)
        print(f"| {name} | {grid} | {f.shape[1]:,} | {cells} | {100 * probe:.2f} |", flush=True)

    if args.baselines:
        row("raw pixels", "—", raw_pixel_features(x))
    for name, enc in encoders.items():
        with torch.inference_mode():
            maps = torch.cat([enc.features(normalize(x[s : s + 2048])) for s in range(0, len(x), 2048)])
        for grid in args.grids:
            sizes = [int(g) for g in grid.split(",")]
            row(name, ", ".join(map(str, sizes)), torch.cat([F.adaptive_avg_pool2d(maps, s).flatten(1) for s in sizes], dim=1))


if __name__ == "__main__":
    main()
