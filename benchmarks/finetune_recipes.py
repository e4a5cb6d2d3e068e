"""Low-label fine-tuning recipes compared on a validation part of train (the test split is never read).

    python benchmarks/finetune_recipes.py --encoder models/encoder.pt [--data data] [--fractions 0.01 0.1]
        [--val 10000] [--recipes baseline,lpft,...] [--seeds 0] [--no-scratch | --no-ssl] [--set evaluate.KEY=VALUE ...]

Holds out a stratified `--val` images of the labelled train split as the validation set; label subsets of the
rest are drawn with the same stratified sampler as the evaluate stage, at the same sizes as the evaluate stage's
fractions of the full train split (600 and 6,000 images on Fashion-MNIST). Each recipe fine-tunes the SSL encoder
and, for the supervised baseline with the same care, a random-init encoder of the same architecture. A recipe is
a change to the fine-tuning settings of params.yaml's `evaluate` section (with `--set` overrides): "baseline" is
those settings with a random head (the evaluate stage starts the SSL encoder's head from a probe, "lpft", from
`evaluate.finetune_probe_min_images` labels). Prints one row per recipe: validation accuracy at each fraction,
SSL and from scratch (mean and half the range over `--seeds`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, cast

from validation import labelled_train_split

from ssl_components.backbones import load_encoder
from ssl_components.config import load_config
from ssl_components.evaluation import finetune, finetune_settings, random_init_like, stratified_subset

# name -> finetune() keyword arguments on top of the evaluate settings' (`finetune_settings`), with a random head
RECIPES: dict[str, dict[str, Any]] = {
    "baseline": {},
    # the default before mixup and flip averaging (2026-12-07): no mixup, at least 200 steps, one view at test
    "previous": {"mixup": 0.0, "min_steps": 200, "flip_tta": False},
    "no_mixup": {"mixup": 0.0},
    "no_tta": {"flip_tta": False},
    "mixup1.0": {"mixup": 1.0},
    "mixup0.2": {"mixup": 0.2},
    "steps800": {"min_steps": 800},
    "smooth": {"label_smoothing": 0.1},
    "lpft": {"head_init": "probe"},
    "lpft_no_mixup": {"head_init": "probe", "mixup": 0.0},
    "lpft_previous": {"head_init": "probe", "mixup": 0.0, "min_steps": 200, "flip_tta": False},
    "lpft_bb0.3": {"head_init": "probe", "backbone_lr_scale": 0.3},
    "lpft_smooth": {"head_init": "probe", "label_smoothing": 0.1},
    "lpft_shift4": {"head_init": "probe", "max_shift": 4},
    "probe_only": {"head_init": "probe", "backbone_lr_scale": 0.0},
    "bb0.3": {"backbone_lr_scale": 0.3},
    "lr3e-3": {"lr": 3e-3},
    "batch64": {"batch_size": 64},
    "wd0.05": {"weight_decay": 0.05},
    # before the head: the default standardises the features (BatchNorm without affine parameters); these do not
    "nonorm": {"head_norm": False},
    "nonorm_lpft": {"head_norm": False, "head_init": "probe"},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1])
    ap.add_argument("--val", type=int, default=10000)
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], help="override a setting, e.g. evaluate.finetune_lr=0.003")
    ap.add_argument("--no-scratch", action="store_true", help="skip the from-scratch baseline")
    ap.add_argument("--no-ssl", action="store_true", help="skip the SSL encoder (the baseline only)")
    args = ap.parse_args()

    images, labels, val_idx, pool_idx = labelled_train_split(args.data, args.val)
    num_classes = int(labels.max()) + 1
    encoder = load_encoder(args.encoder)
    meta = cast(dict[str, Any], encoder.meta)
    print(f"validation: {len(val_idx)} train images held out; pool {len(pool_idx)}; encoder {args.encoder} ({meta['method']})")
    print("| recipe | " + " | ".join(f"{f:g} SSL | {f:g} scratch" for f in args.fractions) + " | minutes |")
    print("|---" * (2 * len(args.fractions) + 2) + "|")
    settings = finetune_settings(load_config(args.params, overrides=args.set).evaluate)
    for name in args.recipes.split(","):
        kwargs = {**settings, **RECIPES[name]}
        cells, t0 = [], time.perf_counter()
        for fraction in args.fractions:
            size = round(fraction * len(labels))
            for enc_name in ("ssl", "scratch"):
                if (enc_name == "scratch" and args.no_scratch) or (enc_name == "ssl" and args.no_ssl):
                    cells.append("—")
                    continue
                accs = []
                for seed in args.seeds:
                    sub = pool_idx[stratified_subset(labels[pool_idx], size / len(pool_idx), seed)]
                    enc = encoder if enc_name == "ssl" else random_init_like(meta, seed)
                    accs.append(finetune(enc, images[sub], labels[sub], images[val_idx], labels[val_idx], num_classes, seed=seed, **kwargs))
                mean = sum(accs) / len(accs)
                cells.append(f"{100 * mean:.2f}" + (f" ±{100 * (max(accs) - min(accs)) / 2:.2f}" if len(accs) > 1 else ""))
        print(f"| {name} | " + " | ".join(cells) + f" | {(time.perf_counter() - t0) / 60:.1f} |", flush=True)


if __name__ == "__main__":
    main()
