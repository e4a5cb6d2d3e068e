"""Run ingest and a pretraining epoch under a memory limit this process sets itself (see test_memory.py).

    python tests/memory_job.py IMAGE_FOLDER WORKDIR HEADROOM_MB STEPS

Imports everything and warms torch up first, then sets RLIMIT_DATA (private writable memory: heap and anonymous
maps; file pages are not counted) to what the process holds then plus HEADROOM_MB. Checks that the limit binds
(holding the store's bytes fails), then runs the ingest stage's function and the pretrain stage's function, and
prints one JSON line: the store's size, the limit, the peak RSS growth, and the training summary.
"""

from __future__ import annotations

import json
import re
import resource
import sys
from pathlib import Path

import numpy as np
import torch

from flows.steps import pretrain as pretrain_step
from ssl_components.config import Config, IngestConfig
from ssl_components.data import ingest, load_dataset
from ssl_components.layout import STORE

MB = 2**20


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmData: private writable memory; VmHWM: peak RSS)."""
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1)) * 1024  # type: ignore[union-attr]


def main(folder: str, workdir: str, headroom_mb: str, steps: str) -> None:
    work = Path(workdir)
    cfg = Config.model_validate(
        {
            "paths": {"data": str(work / "data"), "models": str(work / "models"), "state": str(work / "state")},
            "ingest": {"source": "folder", "path": folder, "image_size": 96, "channels": 3},
            "cache_views": {"mode": "online", "batch_size": 1024},
            "pretrain": {
                "width": 8,
                "epochs": 1,
                "batch_size": 16,
                "max_steps_per_epoch": int(steps),
                "proj_hidden": 64,
                "proj_dim": 32,
                "warmup_epochs": 0,
                "monitor_every": 0,
            },
        }
    )
    torch.set_num_threads(1)
    warm = torch.nn.Conv2d(3, 8, 3)
    warm(torch.zeros(64, 3, 96, 96)).sum().backward()  # the allocator's and thread pool's first allocations
    limit = _status("VmData") + int(headroom_mb) * MB
    resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
    rss_before = _status("VmRSS")

    summary = ingest(IngestConfig.model_validate(cfg.ingest.model_dump()), cfg.paths.data)
    store_bytes = (cfg.paths.data / STORE).stat().st_size
    try:  # the control: holding the store in memory is what the limit forbids
        np.ones(store_bytes, dtype=np.uint8)
        held = True
    except MemoryError:
        held = False
    (cfg.paths.data / "quarantine.csv").write_text("id,path,reason\n")  # nothing quarantined (validate is not under test)
    train = load_dataset(cfg.paths.data, "train")
    result = pretrain_step.train(cfg, {"cache_views": "0" * 16, "pretrain": "memory-test"})
    print(
        json.dumps(
            {
                "images": summary["images"] if "images" in summary else len(train),
                "train_images": len(train),
                "store_bytes": store_bytes,
                "limit_bytes": limit,
                "headroom_bytes": int(headroom_mb) * MB,
                "store_held_under_limit": held,
                "rss_growth_bytes": _status("VmHWM") - rss_before,
                "pretrain": result,
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
