"""The shared pretraining loop: any method, CPU or GPU, checkpoint every epoch, resume, stop on divergence.

A checkpoint (`checkpoints/last.pt`) holds the method's weights and buffers (EMA targets, queues...), the
optimiser, the LR schedule, the RNG state and the epoch; it is written atomically. Data order and views are
derived from (seed, epoch), so a resumed run sees exactly what an uninterrupted one would.

Every `pretrain.monitor_every` epochs (and after the last) a kNN accuracy of the current backbone on a labelled
part of the train split is recorded (`ssl_components.monitor`); with `pretrain.early_stop_patience` the run stops
when it stops improving and keeps the best-monitored encoder. The early-stopping state and the best weights
are in the checkpoint too.

Data-parallel (torchrun, `ssl_components.distributed`): `pretrain.batch_size` is the global batch; each rank
trains on its contiguous share of every batch through DistributedDataParallel with synchronised BatchNorm, and
only rank 0 writes the checkpoint, the encoder and the history. Nothing in a checkpoint depends on the number of
processes, so a run resumes under any number (the data order is the same; each rank's share differs).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ssl_components import distributed
from ssl_components.backbones import normalize, save_encoder
from ssl_components.config import PretrainConfig
from ssl_components.data.store import Images
from ssl_components.errors import ConfigError, TrainingError
from ssl_components.io import save_torch, write_json
from ssl_components.layout import CHECKPOINT, ENCODER, HISTORY
from ssl_components.methods import Method, build_method
from ssl_components.methods.base import VIEWS
from ssl_components.metrics import MONITOR_KNN
from ssl_components.monitor import EarlyStopping, KnnMonitor

if TYPE_CHECKING:
    from ssl_components.views import Rows, ViewProvider

log = logging.getLogger(__name__)


def _optimizer(cfg: PretrainConfig, params) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _schedule(opt, warmup_steps: int, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _rng_state() -> dict:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension std of L2-normalised embeddings; ~0 means every image maps to the same point."""
    return F.normalize(z.float(), dim=1).std(dim=0).mean().item()


def _monitor(cfg: PretrainConfig, monitor_data: tuple[Images, torch.Tensor] | None, seed: int, device) -> KnnMonitor | None:
    """The kNN monitor for these settings, or None when it is off or there are no labels to monitor with."""
    if not cfg.monitor_every:
        return None
    monitor = None if monitor_data is None else KnnMonitor(*monitor_data, cfg.monitor_images, cfg.monitor_knn_k, seed, device)
    if monitor is not None and monitor.usable:
        log.info("pretrain: kNN monitor on %d bank + %d query labelled train images", monitor.bank_size, monitor.query_size)
        return monitor
    if cfg.early_stop_patience:
        raise ConfigError(
            "pretrain.early_stop_patience needs labelled train images for the kNN monitor (at least 2), and there are "
            "none; set pretrain.early_stop_patience=0 or ingest labels (class folders or a manifest label column)"
        )
    log.info("pretrain: no labelled train images to monitor with; the kNN monitor is off")
    return None


def _read_ahead(views: ViewProvider, epoch: int, shares: list[torch.Tensor], kind: str) -> Iterator[tuple[int, torch.Tensor, Rows]]:
    """(step, indices, their stored rows) for each step's indices: a reader thread reads step s + 1's rows from
    disk while step s trains (pread releases the GIL), so a store larger than the page cache does not stall the
    step. The views themselves are made on the training thread, as before: the same batches, only sooner."""
    with ThreadPoolExecutor(1, thread_name_prefix="batch-reader") as reader:
        ahead = reader.submit(views.read, epoch, shares[0], kind)
        for step, idx in enumerate(shares):
            rows = ahead.result()
            if step + 1 < len(shares):
                ahead = reader.submit(views.read, epoch, shares[step + 1], kind)
            yield step, idx, rows


def pretrain(
    cfg: PretrainConfig,
    views: ViewProvider,  # read(epoch, idx, kind) -> stored rows; batch(epoch, step, idx, kind, rows) -> the step's views
    num_images: int,
    input_shape: tuple[int, ...],  # (C, H, W)
    out_dir: str | Path,
    seed: int,
    run_key: str,
    on_epoch_end: Callable[[dict], None] | None = None,
    monitor_data: tuple[Images, torch.Tensor] | None = None,
) -> dict:
    """Train `cfg.method` and write `encoder.pt`, `history.json` and `checkpoints/last.pt` under `out_dir`.

    `run_key` identifies the inputs (data, views, settings): a checkpoint with another key is not resumed.
    `monitor_data` is (uint8 images, labels with -1 for unlabelled) of the train split, for the kNN monitor only:
    labels never reach the training loss. Without it there is no monitor (and early stopping is an error).
    """
    out_dir = Path(out_dir)
    device = distributed.setup(cfg.device)
    world, main = distributed.world_size(), distributed.is_main()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if num_images < 2:
        raise TrainingError(f"pretraining needs at least 2 images, got {num_images}; check the ingest source")
    if cfg.batch_size % world or min(cfg.batch_size, num_images) < 2 * world:
        raise ConfigError(
            f"pretrain.batch_size {cfg.batch_size} (the global batch) must split evenly over {world} processes with at "
            f"least 2 images each; set it to a multiple of pretrain.devices ({world}) and use at least {2 * world} images"
        )
    monitor = _monitor(cfg, monitor_data, seed, device)
    early = EarlyStopping(cfg.early_stop_patience)
    best_backbone: dict[str, torch.Tensor] | None = None  # with early stopping: the best-monitored weights (CPU)
    batch_size = min(cfg.batch_size, num_images) // world * world
    steps_per_epoch = min(num_images // batch_size, cfg.max_steps_per_epoch or num_images)
    torch.manual_seed(seed)
    in_channels = input_shape[0]
    method: Method = build_method(cfg, in_channels).to(device)
    # NHWC: oneDNN's (and cuDNN's) fast convolution layout; +37% images/s for small_cnn on 2 CPU cores (docs/benchmarks.md)
    layout = torch.channels_last if cfg.channels_last else torch.contiguous_format
    method = method.to(memory_format=layout)
    model: torch.nn.Module = method  # what a step runs: the method, or its DDP wrapper
    if world > 1:
        method = distributed.sync_batchnorm(method, device)
        ids = [device.index] if device.type == "cuda" else None
        # buffers (queues, centres, EMA targets) stay identical by construction: no per-step broadcast of them
        model = torch.nn.parallel.DistributedDataParallel(method, device_ids=ids, forward_sync_buffers=False)
    opt = _optimizer(cfg, method.parameters())
    total = steps_per_epoch * cfg.epochs
    sched = _schedule(opt, steps_per_epoch * cfg.warmup_epochs, total)
    history: list[dict] = []
    start = 0

    ckpt_path = out_dir / CHECKPOINT
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt.get("run_key") == run_key:
            method.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            sched.load_state_dict(ckpt["scheduler"])
            _set_rng_state(ckpt["rng"])
            history, start = list(ckpt["history"]), int(ckpt["epoch"]) + 1
            early = EarlyStopping.from_state(ckpt["early_stop"])
            best_backbone = ckpt["best_backbone"]
            log.info(
                "pretrain: resuming from %s at epoch %d of %d (written by %d process(es), now %d)",
                ckpt_path,
                start + 1,
                cfg.epochs,
                ckpt.get("world_size", 1),
                world,
            )
        else:
            log.info("pretrain: %s was written for other inputs or settings; starting from scratch", ckpt_path)

    use_bf16 = cfg.bf16 and device.type == "cuda"
    if method.views not in VIEWS:
        raise ConfigError(f"method {cfg.method!r} asks for views {method.views!r}; a method's views are one of {VIEWS}")
    for epoch in range(start, cfg.epochs):
        if early.stopped:  # resumed from the checkpoint of a run that had stopped early: nothing left to train
            break
        method.train()
        t0 = time.perf_counter()
        order = torch.randperm(num_images, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        total_loss, last_z = 0.0, None
        desc = f"pretrain {cfg.method} epoch {epoch + 1}/{cfg.epochs}"
        quiet = {} if main else {"disable": True}  # one progress bar, rank 0's
        shares = [distributed.shard(order[s * batch_size : (s + 1) * batch_size]) for s in range(steps_per_epoch)]  # this rank's
        bar = tqdm(_read_ahead(views, epoch, shares, method.views), total=steps_per_epoch, desc=desc, leave=False, mininterval=1, **quiet)
        for step, idx, rows in bar:
            made = views.batch(epoch, step, idx, method.views, rows)
            batch = [normalize(v.to(device)).contiguous(memory_format=layout) for v in made]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, z = model(batch)
            value = distributed.mean_over_ranks(loss.item())  # the global batch's loss, the same on every rank
            if not math.isfinite(value):
                raise TrainingError(
                    f"pretraining diverged: loss is {value} at epoch {epoch + 1}, step {step + 1}; "
                    f"lower pretrain.lr (now {cfg.lr}) or raise pretrain.warmup_epochs"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            method.after_step((epoch * steps_per_epoch + step + 1) / total)
            total_loss += value
            last_z = z
            bar.set_postfix(loss=f"{value:.3f}", refresh=False)
        assert last_z is not None  # steps_per_epoch >= 1, as batch_size <= num_images
        std = embedding_std(distributed.gather_nograd(last_z))
        seconds = time.perf_counter() - t0
        record = {
            "epoch": epoch + 1,
            "loss": total_loss / steps_per_epoch,
            "lr": sched.get_last_lr()[0],
            "embedding_std": std,
            "seconds": seconds,
            "images_per_s": steps_per_epoch * batch_size / seconds,
        }
        history.append(record)
        log.info(
            "pretrain: epoch %d/%d loss %.4f std %.4f (%.0f images/s)", epoch + 1, cfg.epochs, record["loss"], std, record["images_per_s"]
        )
        if std < cfg.collapse_std:
            raise TrainingError(
                f"embeddings collapsed at epoch {epoch + 1}: per-dimension std {std:.2e} < pretrain.collapse_std "
                f"({cfg.collapse_std}); lower pretrain.lr or change pretrain.temperature / augmentations"
            )
        if monitor is not None and ((epoch + 1) % cfg.monitor_every == 0 or epoch + 1 == cfg.epochs):
            t1 = time.perf_counter()
            acc = distributed.from_main(monitor(method.backbone) if main else None)  # rank 0 measures, all decide
            method.train()
            record[MONITOR_KNN], record["monitor_seconds"] = acc, time.perf_counter() - t1
            if early.update(epoch + 1, acc) and cfg.early_stop_patience:
                best_backbone = {k: v.detach().to("cpu", copy=True) for k, v in method.backbone.state_dict().items()}
            log.info(
                "pretrain: epoch %d kNN monitor %.4f (best %.4f at epoch %d; %.1f s)",
                epoch + 1,
                acc,
                early.best,
                early.best_epoch,
                record["monitor_seconds"],
            )
            if early.stopped:
                log.warning("pretrain: %s", early.reason())
        if main:
            state = {
                "epoch": epoch,
                "model": method.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(),
                "history": history,
                "run_key": run_key,
                "early_stop": early.state(),
                "best_backbone": best_backbone,
                "world_size": world,
            }
            save_torch(ckpt_path, state)
        if on_epoch_end:
            on_epoch_end(record)

    meta = {
        "backbone": cfg.backbone,
        "width": cfg.width,
        "pool": list(cfg.pool),
        "in_channels": in_channels,
        "image_size": input_shape[-1],
        "out_dim": method.backbone.out_dim,
        "method": cfg.method,
    }
    encoder_epoch = len(history)
    if best_backbone is not None:  # early stopping keeps the best-monitored encoder, not the last
        method.backbone.load_state_dict(best_backbone)
        encoder_epoch = early.best_epoch
    if main:
        save_encoder(method.backbone.cpu().to(memory_format=torch.contiguous_format), meta, out_dir / ENCODER)
        write_json(out_dir / HISTORY, history)
    distributed.barrier()  # every rank returns once the encoder is written
    checks = [h[MONITOR_KNN] for h in history if MONITOR_KNN in h]
    return {
        "epochs": len(history),
        "final_loss": history[-1]["loss"] if history else None,
        "seconds": sum(h["seconds"] for h in history),
        "images_per_s": sum(h["images_per_s"] for h in history) / max(1, len(history)),
        "device": str(device),
        "processes": world,
        "resumed_from_epoch": start,
        "encoder_epoch": encoder_epoch,
        MONITOR_KNN: checks[-1] if checks else None,
        f"best_{MONITOR_KNN}": max(checks) if checks else None,
        "monitor_seconds": sum(h.get("monitor_seconds", 0.0) for h in history),
        "stopped_early": early.stopped,
        "stop_reason": early.reason() if early.stopped else None,
    }
