"""A run pushed to the DVC remote and pulled into a fresh clone: the clone is up to date, byte for byte.

Real git, real `dvc push`/`dvc pull` to a local-folder remote (the default), a real Prefect flow run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny_params

pytestmark = pytest.mark.slow
SSLPIPE = [sys.executable, "-m", "flows.cli"]
OUTPUTS = ["models/encoder.pt", "models/history.json", "reports/metrics.json", "data/manifest.parquet", "data/store.npy"]


def _env(repo: Path, remote: Path, prefect: dict) -> dict:
    env = {**os.environ, **{k: v for k, v in prefect.items() if k.startswith("PREFECT_")}}
    env["PYTHONPATH"] = str(repo)  # the repo's own copy of the code runs
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["SSLPIPE_DVC_REMOTE"] = str(remote)
    for key in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        env.setdefault(key, "test")
    for key in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        env.setdefault(key, "test@example.com")
    return env


def _run(cwd: Path, env: dict, *cmd: str) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env={**env, "PYTHONPATH": str(cwd)}, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, fmnist_folder, prefect_server):
    """A project whose image folder is not in git, run once with `sslpipe run --push`, then committed."""
    base = tmp_path_factory.mktemp("dvcremote")
    repo, remote = base / "repo", base / "remote"
    repo.mkdir()
    for name in ("ssl_components", "flows"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params("images"), sort_keys=False))
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    env = _env(repo, remote, prefect_server)
    _run(repo, env, "git", "init", "-q")
    _run(repo, env, "dvc", "init", "-q")
    _run(repo, env, "dvc", "config", "core.analytics", "false")
    _run(repo, env, "dvc", "config", "core.autostage", "true")
    _run(repo, env, *SSLPIPE, "dvc-yaml")
    _run(repo, env, "git", "add", "-A")
    _run(repo, env, "git", "commit", "-qm", "project")
    shutil.copytree(fmnist_folder, repo / "images")  # the user's images arrive after the code
    out = _run(repo, env, *SSLPIPE, "run", "--push")
    _run(repo, env, "git", "commit", "-qm", "run pushed")  # only what `push` staged
    return repo, remote, env, out


def test_push_versions_the_images_and_every_output_and_tags_the_version(pushed):
    repo, remote, env, out = pushed
    assert f"pushed to DVC remote local ({remote})" in out
    assert "images: images (versioned by DVC in images.dvc)" in out
    assert subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True).stdout == ""
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True).stdout.split()
    assert "images.dvc" in tracked and "dvc.lock" in tracked and not any(p.startswith("images/") for p in tracked)

    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert set(lock) == {"ingest", "validate", "cache_views", "pretrain", "evaluate", "register"}
    cached = {o["md5"] for stage in lock.values() for o in stage.get("outs", []) if "md5" in o}
    in_remote = {p.parent.name + p.name for p in (remote / "files" / "md5").rglob("*") if p.is_file()}
    assert cached <= in_remote  # every output DVC versions is in the remote
    versioned = {o["path"] for s in lock.values() for o in s.get("outs", [])}
    assert "data/cache/views" not in versioned and "models/checkpoints" not in versioned  # working data stays local

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{repo / 'mlflow' / 'mlflow.db'}")
    tags = MlflowClient().get_model_version("ssl-encoder", "1").tags
    manifest = next(o for o in lock["ingest"]["outs"] if o["path"] == "data/manifest.parquet")
    assert tags["dvc.manifest_md5"] == manifest["md5"]
    assert tags["dvc.source_md5"] == yaml.safe_load((repo / "images.dvc").read_text())["outs"][0]["md5"]
    assert tags["dvc.remote"] == str(remote)


def test_a_fresh_clone_pulls_an_up_to_date_byte_identical_workspace(pushed, tmp_path):
    repo, remote, env, _ = pushed
    clone = tmp_path / "clone"
    _run(tmp_path, env, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / "images").exists() and not (clone / "models").exists()

    pulled = _run(clone, env, *SSLPIPE, "pull")
    assert pulled.startswith("pulled from DVC remote local")
    assert json.loads(_run(clone, env, "dvc", "status", "--json")) == {}
    for rel in OUTPUTS:
        assert (clone / rel).read_bytes() == (repo / rel).read_bytes(), rel
    originals = sorted(p.relative_to(repo) for p in (repo / "images").rglob("*.png"))
    assert originals == sorted(p.relative_to(clone) for p in (clone / "images").rglob("*.png"))
    assert all((clone / p).read_bytes() == (repo / p).read_bytes() for p in originals)

    repro = _run(clone, env, "dvc", "repro")
    assert "Running stage" not in repro and "up to date" in repro.lower()
    assert (clone / "models" / "encoder.pt").read_bytes() == (repo / "models" / "encoder.pt").read_bytes()


def test_pushing_again_with_nothing_changed_pushes_nothing_new(pushed):
    repo, remote, env, _ = pushed
    before = {p: p.stat().st_mtime_ns for p in remote.rglob("*") if p.is_file()}
    lock = (repo / "dvc.lock").read_text()
    out = _run(repo, env, *SSLPIPE, "push")
    assert "Everything is up to date" in out
    assert {p: p.stat().st_mtime_ns for p in remote.rglob("*") if p.is_file()} == before
    assert (repo / "dvc.lock").read_text() == lock


def test_push_refuses_a_workspace_whose_stages_are_out_of_date(pushed, tmp_path):
    repo, remote, env, _ = pushed
    work = tmp_path / "work"
    _run(tmp_path, env, "git", "clone", "-q", str(repo), str(work))
    _run(work, env, *SSLPIPE, "pull")
    refused = subprocess.run([*SSLPIPE, "push"], cwd=work, env={**env, "PYTHONPATH": str(work)}, capture_output=True, text=True)
    assert refused.returncode == 2  # a clone has no view cache (DVC does not version it)
    assert refused.stderr.strip().splitlines() == [
        "error: stage cache_views is out of date (output data/cache/views is missing); run `sslpipe run` first, then push"
    ]

    _run(work, env, *SSLPIPE, "stage", "cache_views")  # made again, identical: pretrain stays up to date
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["evaluate"]["knn_k"] += 1
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(work, env, *SSLPIPE, "dvc-yaml")
    refused = subprocess.run([*SSLPIPE, "push"], cwd=work, env={**env, "PYTHONPATH": str(work)}, capture_output=True, text=True)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: stage evaluate is out of date (settings changed: evaluate); run `sslpipe run` first, then push"
    ]


def test_push_refuses_settings_that_params_yaml_does_not_hold(pushed):
    repo, remote, env, _ = pushed
    lock = (repo / "dvc.lock").read_text()
    for cmd in (["push", "--set", "pretrain.epochs=1"], ["run", "--push", "--set", "pretrain.epochs=1"], ["push", "--profile", "full"]):
        proc = subprocess.run([*SSLPIPE, *cmd], cwd=repo, env={**env, "PYTHONPATH": str(repo)}, capture_output=True, text=True)
        assert proc.returncode == 2, cmd
        assert proc.stderr.strip().splitlines() == [
            "error: push records params.yaml's settings in dvc.lock, so outputs made with --set or --profile would be pushed "
            "under settings they were not made with; put those settings in params.yaml, run, then push"
        ]
    assert (repo / "dvc.lock").read_text() == lock
