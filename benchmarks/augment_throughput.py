"""Throughput of two SSL views per image: per-image PIL torchvision v2 vs batched `augment_batch`.

    python benchmarks/augment_throughput.py [--data data] [--pil-images 2000] [--batched-images 20000]

Uses the train images of `--data` when it holds an ingested dataset, else random 28x28 uint8 images.
Prints augmented images per second (two views of N images count as 2N).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from ssl_components.augment import two_views
from ssl_components.config import CacheViewsConfig


def load_images(data: Path, n: int) -> tuple[torch.Tensor, str]:
    if (data / "manifest.parquet").is_file() and (data / "store.npy").is_file():
        from ssl_components.data.dataset import load_dataset

        images = load_dataset(data, "train", exclude_quarantined=False).images.load()  # a benchmark of in-memory batches
        reps = -(-n // len(images))
        return images.repeat(reps, 1, 1, 1)[:n], f"{data}/ train split ({len(images)} images)"
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8), "random 28x28 uint8"


def bench_pil(images: torch.Tensor, cfg: CacheViewsConfig) -> float:
    """What a DataLoader worker does per image: array -> PIL -> RandomResizedCrop, flip, ColorJitter -> tensor."""
    from PIL import Image
    from torchvision.transforms import v2

    size = images.shape[-1]
    transform = v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=cfg.crop_scale, ratio=cfg.crop_ratio, antialias=True),
            v2.RandomHorizontalFlip(cfg.flip_p),
            v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
            v2.PILToTensor(),
        ]
    )
    arrays = images[:, 0].numpy()
    start = time.perf_counter()
    for arr in arrays:
        img = Image.fromarray(arr, mode="L")
        transform(img), transform(img)
    return 2 * len(arrays) / (time.perf_counter() - start)


def bench_batched(images: torch.Tensor, cfg: CacheViewsConfig, device: str, gen_device: str, repeats: int = 3) -> float:
    images = images.to(device)
    gen = torch.Generator(device=gen_device).manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for start in range(0, min(len(images), 2 * cfg.batch_size), cfg.batch_size):  # warm-up
        two_views(images[start : start + cfg.batch_size], cfg, gen)
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for start in range(0, len(images), cfg.batch_size):
            two_views(images[start : start + cfg.batch_size], cfg, gen)
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * len(images) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--pil-images", type=int, default=2000)
    parser.add_argument("--batched-images", type=int, default=20000)
    parser.add_argument("--cuda-images", type=int, default=60000)
    args = parser.parse_args()

    cfg = CacheViewsConfig()  # the params.yaml defaults: crop (0.3, 1), flip 0.5, brightness/contrast 0.4
    cfg_all = cfg.model_copy(update={"blur_p": 0.5, "noise_std": 0.02})
    images, source = load_images(args.data, max(args.pil_images, args.batched_images))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(
        f"machine: {platform.machine()}, cpu_count={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
        f"torch {torch.__version__}, cuda device: {gpu}"
    )
    print(f"images: {source}, shape {tuple(images.shape[1:])}, batch_size {cfg.batch_size}; two views per image\n")

    rows = [("per-image PIL torchvision v2 (crop, flip, jitter)", "cpu", args.pil_images, bench_pil(images[: args.pil_images], cfg))]
    batched = images[: args.batched_images]
    rows.append(("augment_batch (crop, flip, jitter)", "cpu", len(batched), bench_batched(batched, cfg, "cpu", "cpu")))
    rows.append(("augment_batch (+ blur p=0.5, noise)", "cpu", len(batched), bench_batched(batched, cfg_all, "cpu", "cpu")))
    small = cfg.model_copy(update={"batch_size": 1024})
    rows.append(("augment_batch (crop, flip, jitter), batch_size 1024", "cpu", len(batched), bench_batched(batched, small, "cpu", "cpu")))
    if torch.cuda.is_available():
        big = images.repeat(-(-args.cuda_images // len(images)), 1, 1, 1)[: args.cuda_images]
        for name, c in (("crop, flip, jitter", cfg), ("+ blur p=0.5, noise", cfg_all)):
            rows.append((f"augment_batch ({name}), CPU generator", "cuda", len(big), bench_batched(big, c, "cuda", "cpu")))
            rows.append((f"augment_batch ({name}), CUDA generator", "cuda", len(big), bench_batched(big, c, "cuda", "cuda")))

    base = rows[0][3]
    print(f"{'pipeline':<58} {'device':<6} {'images':>7} {'images/s':>11} {'vs PIL':>8}")
    for name, device, n, rate in rows:
        print(f"{name:<58} {device:<6} {n:>7} {rate:>11,.0f} {rate / base:>7.1f}x")


if __name__ == "__main__":
    main()
