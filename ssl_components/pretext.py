"""Batched tensor transforms for pretext tasks: rotations, jigsaw tile shuffling, additive noise.

Every transform works on a whole batch at once; random numbers come from the given generator, on the
generator's device, then move to the images' device (a CPU generator gives the same draws on CPU and GPU).
`StepRNG` gives a method one such generator per training step from buffers, so a resumed run draws the same.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn as nn

from ssl_components.distributed import rank

_MAX_ENUMERATE = 9  # up to 9! = 362,880 permutations are enumerated; more tiles use a random candidate pool
_POOL = 20_000


def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) square images -> (all four rotations (4B, C, H, W), labels 0..3 for 0/90/180/270 degrees).

    Rotation k of every image is at rows [k*B, (k+1)*B); k = 0 is the batch itself."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations need square images, got {tuple(x.shape[-2:])}")
    x4 = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    return x4, torch.arange(4, device=x.device).repeat_interleave(len(x))


def jigsaw_permutations(n_tiles: int, count: int, seed: int = 0) -> torch.Tensor:
    """`count` distinct permutations of `n_tiles` tiles, (count, n_tiles) long, chosen to be far apart.

    Greedy max-Hamming selection (Noroozi & Favaro 2016): start from a random permutation, then repeatedly add
    the candidate whose minimum Hamming distance to those chosen is largest (ties broken at random).
    Deterministic from `seed`; count = n_tiles! gives every permutation.
    """
    if count < 1 or count > math.factorial(n_tiles):
        raise ValueError(f"{n_tiles} tiles have {math.factorial(n_tiles)} permutations; cannot choose {count}")
    g = torch.Generator().manual_seed(int(seed))
    if n_tiles <= _MAX_ENUMERATE:
        flat = itertools.chain.from_iterable(itertools.permutations(range(n_tiles)))
        pool = torch.from_numpy(np.fromiter(flat, dtype=np.int64).reshape(-1, n_tiles))
    else:
        pool = torch.rand(_POOL, n_tiles, generator=g).argsort(dim=1).unique(dim=0)
        if count > len(pool):
            raise ValueError(f"cannot choose {count} permutations of {n_tiles} tiles from a pool of {len(pool)}")
    pool = pool[torch.randperm(len(pool), generator=g)]  # random order: argmax then breaks ties at random
    cols = np.ascontiguousarray(pool.numpy().T.astype(np.uint8))  # (n_tiles, N); numpy: ~30x faster here
    chosen = [0]
    min_dist = (cols != cols[:, :1]).sum(0, dtype=np.uint8)
    for _ in range(count - 1):
        i = int(min_dist.argmax())
        chosen.append(i)
        np.minimum(min_dist, (cols != cols[:, i : i + 1]).sum(0, dtype=np.uint8), out=min_dist)
    return pool[chosen]


def shuffle_tiles(
    x: torch.Tensor, grid: int, perms: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut each image into grid x grid tiles (H, W cropped centrally to multiples of grid) and reorder them
    with its own permutation drawn from `perms` (P, grid²): output tile t is input tile perms[label, t]
    (tiles in row-major order). Returns (shuffled (B, C, H', W'), labels (B,) indices into perms)."""
    b, c, h, w = x.shape
    th, tw = h // grid, w // grid
    top, left = (h - th * grid) // 2, (w - tw * grid) // 2
    x = x[:, :, top : top + th * grid, left : left + tw * grid]
    dev = generator.device if generator is not None else x.device
    labels = torch.randint(len(perms), (b,), generator=generator, device=dev).to(x.device)
    tiles = x.reshape(b, c, grid, th, grid, tw).permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, th, tw)
    order = perms.to(x.device)[labels]  # (B, grid²)
    tiles = tiles[torch.arange(b, device=x.device)[:, None], order]
    out = tiles.reshape(b, grid, grid, c, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, th * grid, tw * grid)
    return out, labels


def add_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x plus Gaussian noise of standard deviation `std` (no clamping)."""
    dev = generator.device if generator is not None else x.device
    return x + std * torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)


class StepRNG(nn.Module):
    """A fresh CPU generator per call, seeded from (seed, step); both are buffers, saved in checkpoints.

    The seed is drawn from the global RNG when the module is built (`pretrain` seeds that), so runs with
    different seeds draw differently and a resumed run draws exactly what an uninterrupted one would."""

    seed: torch.Tensor
    step: torch.Tensor

    def __init__(self):
        super().__init__()
        self.register_buffer("seed", torch.randint(2**31, ()))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def at(self, step: int) -> torch.Generator:
        # each data-parallel rank draws for its own part of the batch (rank 0: what one process draws)
        return torch.Generator().manual_seed(int(self.seed) * 1_000_003 + int(step) + rank() * 7_919_000_003)

    def next(self) -> torch.Generator:
        g = self.at(int(self.step))
        self.step += 1
        return g
