"""SimCLR pretraining images/s: the pipeline's step vs lightly's per-image recipe, on the same encoder, in one run.

    python benchmarks/pretrain_vs_lightly.py [--data data] [--images 10240] [--epochs 3] [--set pretrain.width=32 ...]

Both sides train the pipeline's `small_cnn` encoder (the `pretrain` settings of params.yaml's quick profile, with
`--set` overrides) with batch `pretrain.batch_size`, AdamW at `pretrain.lr`, a 2-layer projection head and NT-Xent at
`pretrain.temperature`, over the same `--images` train images, for `--epochs` epochs; each side's figure is its last
epoch (the first ones warm up allocators and kernels). Images/s counts images (each gives two views) per second.

- pipeline: `ssl_components.training.pretrain` itself with online views, i.e. the views of each epoch made in
  batches by `augment_batch` inside the timed epoch (the default `cached` mode reads them ready-made instead,
  which is faster still; `--cached` measures that).
- lightly (a development-only dependency: `pip install lightly`): a torchvision dataset of PIL images,
  `lightly.transforms.SimCLRTransform` in a DataLoader with `--workers` worker processes (2 by default: the
  machine's cores), `SimCLRProjectionHead` and `NTXentLoss`, the loop of lightly's SimCLR example.

Prints both figures and the ratio pipeline / lightly.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from ssl_components.backbones import build_backbone
from ssl_components.config import CacheViewsConfig, PretrainConfig, load_config
from ssl_components.io import read_json
from ssl_components.training import pretrain
from ssl_components.views import ViewProvider, write_views


def load_images(data: Path, n: int) -> tuple[torch.Tensor, str]:
    if (data / "manifest.parquet").is_file() and (data / "store.npy").is_file():
        from ssl_components.data.dataset import load_dataset

        images = load_dataset(data, "train", exclude_quarantined=False).images
        return images[:n].clone(), f"{data}/ train split, first {min(n, len(images))} images"
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=gen), "random 28x28 uint8"


def bench_pipeline(images: torch.Tensor, cfg: PretrainConfig, views_cfg: CacheViewsConfig, cached: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        key = "0" * 16
        if cached:
            views_cfg = views_cfg.model_copy(update={"mode": "cached", "num_pairs": cfg.epochs})
            write_views(images, views_cfg, Path(tmp) / "views", seed=0, key=key)
        else:
            views_cfg = views_cfg.model_copy(update={"mode": "online"})
        provider = ViewProvider(views_cfg, images, Path(tmp) / "views", seed=0, key=key)
        pretrain(cfg, provider, len(images), tuple(images.shape[1:]), Path(tmp) / "out", seed=0, run_key="bench")
        history = read_json(Path(tmp) / "out" / "history.json")
    return float(history[-1]["images_per_s"])


class _PILDataset(Dataset):
    def __init__(self, images: torch.Tensor, transform):
        from PIL import Image

        mode = "L" if images.shape[1] == 1 else "RGB"
        arrays = images.permute(0, 2, 3, 1).numpy()
        self.images = [Image.fromarray(a[..., 0] if mode == "L" else a, mode=mode) for a in arrays]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i])


def bench_lightly(images: torch.Tensor, cfg: PretrainConfig, views_cfg: CacheViewsConfig, workers: int) -> float:
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    channels = images.shape[1]
    transform = SimCLRTransform(
        input_size=images.shape[-1],
        min_scale=views_cfg.crop_scale[0],
        cj_prob=1.0,
        cj_strength=1.0,
        cj_bright=views_cfg.brightness,
        cj_contrast=views_cfg.contrast,
        cj_sat=0.0,
        cj_hue=0.0,
        random_gray_scale=0.0,
        gaussian_blur=views_cfg.blur_p,
        hf_prob=views_cfg.flip_p,
        normalize={"mean": [0.5] * channels, "std": [0.5] * channels},  # the pipeline's [-1, 1] input range
    )
    torch.manual_seed(0)
    backbone = build_backbone(cfg.backbone, channels, cfg.width)
    head = SimCLRProjectionHead(backbone.out_dim, cfg.proj_hidden, cfg.proj_dim)
    model = torch.nn.Sequential(backbone, head)
    criterion = NTXentLoss(temperature=cfg.temperature)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loader = DataLoader(
        _PILDataset(images, transform),
        batch_size=cfg.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    rate = 0.0
    for _ in range(cfg.epochs):
        t0, seen = time.perf_counter(), 0
        for x0, x1 in loader:
            z0, z1 = model(x0), model(x1)
            loss = criterion(z0, z1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            seen += len(x0)
        rate = seen / (time.perf_counter() - t0)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--images", type=int, default=10240)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers")
    ap.add_argument("--cached", action="store_true", help="the pipeline reads views from a view cache (its default mode)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="params overrides, as for sslpipe")
    ap.add_argument("--only", choices=["pipeline", "lightly"], default=None)
    args = ap.parse_args()

    params = load_config("params.yaml", overrides=args.set)
    cfg = params.pretrain.model_copy(update={"epochs": args.epochs, "monitor_every": 0, "method": "simclr", "device": "cpu"})
    views_cfg = params.cache_views
    images, what = load_images(args.data, args.images)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"data: {what}; encoder {cfg.backbone} width {cfg.width}, batch {cfg.batch_size}, {args.epochs} epochs (last one timed)")
    rates = {}
    if args.only in (None, "pipeline"):
        rates["pipeline"] = bench_pipeline(images, cfg, views_cfg, args.cached)
        print(f"pipeline ({'cached' if args.cached else 'online'} views): {rates['pipeline']:,.0f} images/s", flush=True)
    if args.only in (None, "lightly"):
        rates["lightly"] = bench_lightly(images, cfg, views_cfg, args.workers)
        print(f"lightly ({args.workers} DataLoader workers): {rates['lightly']:,.0f} images/s", flush=True)
    if len(rates) == 2:
        print(f"ratio pipeline / lightly: {rates['pipeline'] / rates['lightly']:.2f}x")


if __name__ == "__main__":
    main()
