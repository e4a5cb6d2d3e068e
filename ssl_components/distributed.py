"""Data-parallel pretraining on PyTorch's own engine: torchrun processes, DistributedDataParallel, collectives.

`torchrun --nproc_per_node N` starts N copies of the pretrain stage (flows/steps/pretrain.py does this when
`pretrain.devices` > 1) and sets RANK, LOCAL_RANK and WORLD_SIZE; `setup()` joins them into one process group
(NCCL on GPUs, gloo on CPU). Everything here is a no-op in a single process, so the methods call `gather`
unconditionally and one process behaves exactly as before.

Which losses see the whole batch: those whose value depends on other samples of the batch gather their
embeddings from every rank first (`gather`, with gradients flowing back to the rank that made each row), so
every rank computes the loss of the global batch: NT-Xent's negatives, MoCo's keys (and the queue they are
written to), Barlow Twins' and VICReg's batch statistics, SwAV's Sinkhorn codes and DINO's centre. The
per-sample losses (BYOL, SimSiam, MAE, the autoencoders and pretext tasks) stay local: DDP's gradient
average is then the global batch mean. BatchNorm layers become synchronised (`sync_batchnorm`) so that their
statistics, too, are those of the global batch.

Gradients: the differentiable all-gather (its backward is a reduce-scatter) sums the gradients of every rank's copy of the loss into
the rank that produced each row, and DDP divides the summed parameter gradients by the world size, so the
update equals one process's on the whole batch (tests/test_distributed.py checks it against one process).
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol  # torch's differentiable collectives
import torch.nn as nn

from ssl_components.device import resolve_device
from ssl_components.errors import ConfigError

WORLD_ENV = "WORLD_SIZE"  # set by torchrun in every process it starts
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def launched() -> bool:
    """True in a process that torchrun started as one of several."""
    return int(os.environ.get(WORLD_ENV, "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def setup(device_name: str) -> torch.device:
    """Join torchrun's process group (once) and return this rank's device: cuda:LOCAL_RANK with NCCL, or the
    CPU with gloo. In a single process: just the resolved device."""
    device = resolve_device(device_name)
    if not launched():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"pretrain.devices asks for {os.environ[WORLD_ENV]} processes but only {torch.cuda.device_count()} "
                "GPU(s) are visible; lower pretrain.devices or make more GPUs visible (CUDA_VISIBLE_DEVICES)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather(x: torch.Tensor) -> torch.Tensor:
    """Rows of every rank, concatenated in rank order; differentiable (each rank's rows get the gradients of
    every rank's use of them). The tensor itself in a single process."""
    if not active():
        return x
    return funcol.wait_tensor(funcol.all_gather_single_autograd(x.contiguous(), 0, _world()))


@torch.no_grad()
def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    if not active():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _world() -> dist.ProcessGroup:
    group = dist.group.WORLD
    assert group is not None  # only called while active()
    return group


def mean_over_ranks(value: float) -> float:
    """The mean of a number over all ranks (the same number in a single process)."""
    if not active():
        return value
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (pickled through the process group: only for small Python values)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        dist.barrier()


def shard(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous part of a global batch of indices (rank 0 the first 1/N, ...): gathered in rank
    order, the rows come back in the global batch's order."""
    return idx.chunk(world_size())[rank()] if active() else idx


def _sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Differentiable all-reduce (sum): the gradient of each rank's copy flows back to every rank."""
    return funcol.wait_tensor(funcol.all_reduce(x, "sum", _world()))


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch for any tensor rank and device: training statistics are summed over the
    ranks with differentiable all-reduces (two passes: the mean, then the centred squares).

    torch.nn.SyncBatchNorm does the same with fused kernels, but only for GPU tensors; `sync_batchnorm` uses it
    there and this module on the CPU (gloo). In eval mode, or in a single process, it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and active()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.float()
        count = torch.tensor([float(x.numel() // x.shape[1])], dtype=torch.float64)
        dist.all_reduce(count)
        n = float(count.item())
        mean = _sum_over_ranks(x.sum(dims)) / n
        centred = x - mean.view(shape)
        var = _sum_over_ranks(centred.pow(2).sum(dims)) / n  # biased, as BatchNorm normalises with
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                assert self.num_batches_tracked is not None
                self.num_batches_tracked.add_(1)
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                unbiased = var.detach() * n / max(n - 1, 1.0)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


def sync_batchnorm(module: ModuleT, device: torch.device) -> ModuleT:
    """Every BatchNorm layer of `module` computing global-batch statistics: torch's SyncBatchNorm on GPUs,
    GlobalBatchNorm elsewhere. Weights, buffers and train/eval mode are kept."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    return _convert(module, GlobalBatchNorm)  # type: ignore[return-value]


def _convert(module: nn.Module, cls: Callable[..., nn.modules.batchnorm._BatchNorm]) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        new.load_state_dict(module.state_dict())
        for new_p, old_p in zip(new.parameters(), module.parameters(), strict=True):
            new_p.requires_grad_(old_p.requires_grad)  # a momentum target's layers stay frozen
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, _convert(child, cls))
    return module
