"""What the distributed tests run in every torchrun process: `python -m torch.distributed.run ... ddp_job.py JOB ARGS`.

Jobs:
  step OUT METHOD ...            for each method, one step on this rank's half of a fixed batch (STEP_CASES);
                                 saves loss, gradients and buffers to OUT/<method>_rank<r>.pt
  train OUT NAME METHOD IMAGES [KEY=VALUE ...]
                                 methodkit.train on the images saved at IMAGES (torch.save), settings overridden
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from methodkit import settings, train
from multicropkit import MULTICROP

from ssl_components import distributed
from ssl_components.methods import build_method

STEP_BATCH = 16  # the global batch of the `step` job; each of 2 ranks gets 8
# method -> (settings, local crop sizes): the methods whose loss depends on the whole batch, and two that do not
STEP_CASES: dict[str, tuple[list[str], list[int]]] = {
    "simclr": ([], []),
    "moco": (["pretrain.queue_size=64"], []),
    "barlow_twins": ([], []),
    "vicreg": ([], []),
    "byol": ([], []),
    "simsiam": ([], []),
    "swav": (MULTICROP, [8, 8]),
    "dino": (MULTICROP, [8, 8]),
}


def step_batch(method: str) -> list[torch.Tensor]:
    """A fixed batch of views in [-1, 1]: two 16x16 global views, then the method's local crops."""
    g = torch.Generator().manual_seed(0)
    sizes = [16, 16, *STEP_CASES[method][1]]
    return [torch.rand(STEP_BATCH, 1, s, s, generator=g) * 2 - 1 for s in sizes]


def step_method(method: str):
    torch.manual_seed(0)
    return build_method(settings(method, *STEP_CASES[method][0]).pretrain, 1)


def step(out: Path, methods: list[str]) -> None:
    device = distributed.setup("cpu")
    for name in methods:
        method = distributed.sync_batchnorm(step_method(name), device)
        model = torch.nn.parallel.DistributedDataParallel(method)
        idx = distributed.shard(torch.arange(STEP_BATCH))
        loss, _ = model([v[idx] for v in step_batch(name)])
        loss.backward()
        state = {
            "loss": loss.detach(),
            "rows": idx,
            "grads": {n: p.grad for n, p in method.named_parameters() if p.requires_grad},
            "buffers": dict(method.named_buffers()),
        }
        torch.save(state, out / f"{name}_rank{distributed.rank()}.pt")


def main(job: str, *args: str) -> None:
    if job == "step":
        step(Path(args[0]), list(args[1:]))
    elif job == "train":
        out, name, method, images, *overrides = args
        train(Path(out), name, method, torch.load(images, weights_only=True), overrides)
    else:
        raise SystemExit(f"unknown job {job!r}")
    distributed.teardown()


if __name__ == "__main__":
    main(*sys.argv[1:])
