"""Data-parallel pretraining in real torchrun processes: 2 ranks with gloo on the CPU.

One step on 2 ranks x B equals one process on 2B; one run per method family learns under DDP as it does in
one process; the pipeline's pretrain stage launches torchrun itself, and a stage killed with kill -9 leaves no
worker behind and resumes (under 2 processes, or under 1) to what an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import yaml
from conftest import ROOT, tiny_params
from ddp_job import STEP_BATCH, STEP_CASES, step_batch, step_method
from methodkit import settings
from servers import SSLPIPE, start, wait_for

from ssl_components.backbones import load_encoder
from ssl_components.distributed import GlobalBatchNorm, sync_batchnorm
from ssl_components.methods import build_method
from ssl_components.training import CHECKPOINT

JOB = Path(__file__).with_name("ddp_job.py")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{JOB.parent}", "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(JOB), *args]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def ddp_train(tmp_path, name, method, images, overrides=()):
    """methodkit.train's arguments, run in 2 torchrun processes."""
    saved = tmp_path / f"{name}_images.pt"
    torch.save(images, saved)
    torchrun(2, "train", str(tmp_path), name, method, str(saved), *overrides)


@pytest.fixture(scope="module")
def ddp_steps(tmp_path_factory) -> Path:
    """One torchrun (2 ranks x 8 images) that takes one step of every method in STEP_CASES."""
    out = tmp_path_factory.mktemp("steps")
    torchrun(2, "step", str(out), *STEP_CASES)
    return out


@pytest.mark.parametrize("method", STEP_CASES)
def test_loss_gradients_and_buffers_on_2_ranks_of_b_equal_one_process_on_2b(ddp_steps, method):
    """SimCLR's negatives, MoCo's keys and queue, Barlow Twins' and VICReg's statistics, SwAV's codes, DINO's centre:
    each sees the global batch; BYOL and SimSiam (per-sample losses) through DDP's gradient average; BatchNorm
    statistics are the global batch's everywhere."""
    ranks = [torch.load(ddp_steps / f"{method}_rank{r}.pt", weights_only=True) for r in (0, 1)]
    half = STEP_BATCH // 2
    assert ranks[0]["rows"].tolist() == list(range(half)) and ranks[1]["rows"].tolist() == list(range(half, STEP_BATCH))

    one = step_method(method)
    loss, _ = one.training_step(step_batch(method))
    loss.backward()
    # the global batch's loss is the ranks' mean (what training logs); whole-batch losses are the same on each rank
    torch.testing.assert_close((ranks[0]["loss"] + ranks[1]["loss"]) / 2, loss.detach(), rtol=1e-5, atol=1e-6)
    params = {n: p for n, p in one.named_parameters() if p.requires_grad}
    # float32 sums in another order: ~2e-6 of the largest gradient. Biases just before a BatchNorm have a true
    # gradient of 0 (~1e-7 of rounding here), hence an absolute floor at 1e-5 of the largest; a wrong gradient
    # (a loss on one rank's rows only, BatchNorm on half the batch) is off by 1e-2 of it or more
    atol = 1e-5 * max(p.grad.abs().max().item() for p in params.values())
    for r in ranks:
        assert r["grads"].keys() == params.keys()
        for name, p in params.items():
            torch.testing.assert_close(r["grads"][name], p.grad, rtol=1e-4, atol=atol, msg=f"gradient of {name}")
        for name, b in one.named_buffers():  # BatchNorm statistics, MoCo's queue, DINO's centre
            torch.testing.assert_close(r["buffers"][name].to(b.dtype), b, rtol=1e-4, atol=1e-6, msg=f"buffer {name}")
    for name in ranks[0]["grads"]:  # DDP's all-reduce: bit-identical gradients on every rank
        assert torch.equal(ranks[0]["grads"][name], ranks[1]["grads"][name]), name


def test_sync_batchnorm_on_cpu_keeps_weights_buffers_and_frozen_layers():
    torch.manual_seed(0)
    method = build_method(settings("byol").pretrain, 1)
    for m in method.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_()
    before = method.state_dict()
    frozen = {n for n, p in method.named_parameters() if not p.requires_grad}
    converted = sync_batchnorm(method, torch.device("cpu"))
    assert not any(type(m) in (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d) for m in converted.modules())
    assert sum(isinstance(m, GlobalBatchNorm) for m in converted.modules()) > 0
    after = converted.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert {n for n, p in converted.named_parameters() if not p.requires_grad} == frozen and frozen  # the EMA target
    x = torch.rand(8, 1, 16, 16) * 2 - 1
    converted.eval()  # one process: plain BatchNorm, the same outputs as before the conversion
    reference = build_method(settings("byol").pretrain, 1)
    reference.load_state_dict(before)
    torch.testing.assert_close(converted.backbone(x), reference.eval().backbone(x))


FAMILIES = {
    "contrastive (SimCLR)": ("methodkit", "simclr", [], {}),
    "momentum encoder and queue (MoCo)": ("methodkit", "moco", ["pretrain.queue_size=64"], {}),
    "redundancy reduction (Barlow Twins)": ("methodkit", "barlow_twins", [], {}),
    "clustering with multi-crop (SwAV)": ("multicropkit", "swav", None, {}),
    "masked modelling (MAE)": (
        "methodkit",
        "mae",
        ["pretrain.backbone=vit_tiny", "pretrain.width=32", "pretrain.warmup_epochs=0"],
        {"epochs": 10},
    ),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_each_method_family_learns_under_ddp_like_in_one_process(tmp_path, family):
    kit, method, overrides, kw = FAMILIES[family]
    if kit == "multicropkit":
        from multicropkit import check_learns as check_multicrop

        out = check_multicrop(tmp_path, method, run=ddp_train, **kw)
    else:
        from methodkit import check_learns

        out = check_learns(tmp_path, method, overrides, run=ddp_train, **kw)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == len(out["losses"]) and load_encoder(tmp_path / "run" / "encoder.pt").meta["method"] == method
    print(family, out)


# --- the pipeline's stage, launched by the stage itself ---------------------------------------------------------

EPOCHS = 30  # ~0.2 s each on 2 ranks: room for a kill after the first epochs


def _project(root: Path, images: Path, devices: int = 2) -> Path:
    root.mkdir(parents=True)
    raw = tiny_params(images, pretrain={"epochs": EPOCHS, "devices": devices, "batch_size": 64, "monitor_every": 5})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def _stage(project: Path, name: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*SSLPIPE, "stage", name, *args], cwd=project, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _weights(project: Path) -> dict:
    return torch.load(project / "models" / "encoder.pt", weights_only=True)["state_dict"]


def _result(project: Path) -> dict:
    """The pretrain stage's result, as its record keeps it."""
    return json.loads((project / ".sslpipe" / "stamps" / "pretrain.json").read_text())["result"]


def _losses(project: Path) -> list[float]:
    return [h["loss"] for h in json.loads((project / "models" / "history.json").read_text())]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, fmnist_folder) -> Path:
    """A project whose pretrain inputs are ready (ingest, validate, cache_views); tests copy it."""
    project = _project(tmp_path_factory.mktemp("ddp") / "prepared", fmnist_folder)
    for name in ("ingest", "validate", "cache_views"):
        _stage(project, name)
    return project


@pytest.mark.slow
def test_stage_launches_torchrun_and_a_kill_9_resumes_to_the_uninterrupted_result(tmp_path, prepared):
    straight = shutil.copytree(prepared, tmp_path / "straight", symlinks=True)
    log = _stage(straight, "pretrain").stderr
    result = _result(straight)
    assert result["processes"] == 2 and result["epochs"] == EPOCHS, result
    assert log.count(f"pretrain: epoch {EPOCHS}/{EPOCHS} loss") == 1, log[-3000:]  # progress, logged by rank 0 alone

    killed = shutil.copytree(prepared, tmp_path / "killed", symlinks=True)
    proc = start([*SSLPIPE, "stage", "pretrain"], _env(), killed / "killed.log", killed)
    checkpoint = killed / "models" / CHECKPOINT
    try:
        wait_for(lambda: checkpoint.is_file() and torch.load(checkpoint, weights_only=True)["epoch"] >= 1, 300, "two epochs", every=0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len([w for w in workers if "ddp" in " ".join(w.cmdline())]) >= 3  # torchrun and its 2 workers
        os.kill(proc.pid, signal.SIGKILL)  # the stage's process alone: its torchrun and workers must follow
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, [p.cmdline() for p in alive]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    stopped_at = torch.load(checkpoint, weights_only=True)["epoch"] + 1
    assert 2 <= stopped_at < EPOCHS and not (killed / "models" / "encoder.pt").exists()
    one_process = shutil.copytree(killed, tmp_path / "one_process", symlinks=True)

    _stage(killed, "pretrain")
    resumed = _result(killed)
    assert resumed["resumed_from_epoch"] == stopped_at and resumed["processes"] == 2
    assert _losses(killed) == pytest.approx(_losses(straight), rel=1e-5)
    a, b = _weights(straight), _weights(killed)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"weights differ after the resume: {k}")

    # the same checkpoint resumed by one process: global batch, data order and optimiser state carry over
    _stage(one_process, "pretrain", "--set", "pretrain.devices=1")
    result = _result(one_process)
    assert result["processes"] == 1 and result["resumed_from_epoch"] == stopped_at, result
    assert len(_losses(one_process)) == EPOCHS and _losses(one_process)[:stopped_at] == _losses(straight)[:stopped_at]
    assert _losses(one_process)[-1] == pytest.approx(_losses(straight)[-1], rel=0.02)


@pytest.mark.slow
def test_a_settings_error_in_the_workers_is_one_line_from_the_stage(tmp_path, prepared):
    project = shutil.copytree(prepared, tmp_path / "p", symlinks=True)
    cmd = [*SSLPIPE, "stage", "pretrain", "--set", "pretrain.batch_size=63"]
    proc = subprocess.run(cmd, cwd=project, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: pretrain.batch_size 63 (the global batch) must split evenly over 2 processes"), last
