"""pretrain: the SSL method on the validated train images; resumes only a checkpoint of this same key.

The train labels feed only the kNN monitor (and early stopping on it), never the loss.

With `pretrain.devices` N > 1 the stage starts `torchrun --standalone --nproc_per_node N` on this module (the
same `train` in every process, see ssl_components/distributed.py) and returns what rank 0 wrote; the Prefect
flow and `dvc repro` both come through `run`, so both launch it that way. The launched processes end when the
stage's process dies (kill -9 included), so a killed run never leaves training behind it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from ssl_components import distributed, errors, layout
from ssl_components.config import Config
from ssl_components.data import load_dataset
from ssl_components.errors import PipelineError, TrainingError
from ssl_components.io import read_json, write_json
from ssl_components.training import pretrain
from ssl_components.views import ViewProvider

LAUNCH_DIR = "ddp"  # under paths.state: the launch spec and the result (or the error) of the last DDP run
_PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None  # loaded before any fork


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when its parent dies (torchrun passes it on to its workers)."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def train(cfg: Config, keys: dict[str, str]) -> dict:
    """The stage's work in this process (one of torchrun's when launched by it)."""
    data = load_dataset(cfg.paths.data, "train")
    device = str(distributed.setup(cfg.pretrain.device))
    views = ViewProvider(cfg.cache_views, data.images, cfg.paths.data / layout.VIEWS, cfg.seed, keys["cache_views"], device=device)
    c, h, w = data.images.shape[1:]
    # labels go to the kNN monitor only (a labelled part of the train split), never to the training loss
    return pretrain(
        cfg.pretrain,
        views,
        len(data),
        (c, h, w),
        cfg.paths.models,
        cfg.seed,
        run_key=keys["pretrain"],
        monitor_data=(data.images, data.labels),
    )


def run(cfg: Config, keys: dict[str, str]) -> dict:
    if cfg.pretrain.devices > 1 and not distributed.launched():
        return launch(cfg, keys)
    return train(cfg, keys)


def launch(cfg: Config, keys: dict[str, str]) -> dict:
    """Run `train` in `pretrain.devices` processes under torchrun; rank 0's result, or its error raised here."""
    n = cfg.pretrain.devices
    folder = cfg.paths.state / LAUNCH_DIR
    spec, result = folder / "spec.json", folder / "result.json"
    result.unlink(missing_ok=True)
    write_json(spec, {"config": cfg.to_dict(), "keys": keys, "result": str(result.resolve())})
    env = dict(os.environ)
    # torchrun's default is 1 thread per process; share the cores out instead (unless the user chose)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m", __name__, str(spec)]
    proc = subprocess.run(cmd, env=env, preexec_fn=_die_with_parent)
    outcome = read_json(result) if result.is_file() else {}
    if proc.returncode == 0 and "result" in outcome:
        return outcome["result"]
    if "error" in outcome:  # a PipelineError in a worker: the same one-line error, the same class
        cls = getattr(errors, outcome["error"]["type"], PipelineError)
        raise cls(outcome["error"]["message"])
    raise TrainingError(
        f"distributed pretraining with {n} processes failed (torchrun exit {proc.returncode}); the traceback is above. "
        "Run with pretrain.devices=1 to see the error in one process"
    )


def _worker(spec_path: str) -> int:
    _die_with_parent()  # torchrun's worker: ends with torchrun
    # rank 0 logs the stage's progress (to stderr, which torchrun passes through); the other ranks only warnings
    level = logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    spec = read_json(Path(spec_path))
    cfg = Config.model_validate(spec["config"])
    try:
        outcome = {"result": train(cfg, spec["keys"])}
    except PipelineError as exc:
        outcome = {"error": {"type": type(exc).__name__, "message": str(exc)}}
    finally:
        distributed.teardown()
    if "error" in outcome or os.environ.get("RANK", "0") == "0":
        write_json(Path(spec["result"]), outcome)  # atomic; every failing rank says the same
    return 0 if "result" in outcome else 1


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1]))
