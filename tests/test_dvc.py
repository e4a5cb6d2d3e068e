"""`dvc repro` in a temporary git repository holding a copy of the project's code (which is what runs): the full
chain, a no-op second run, params and code changes that re-run only the stages that depend on them, agreement
with the Prefect flow on what is stale, the workspace lock, and a dvc.yaml that no longer matches the code."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny_params

pytestmark = pytest.mark.slow


def _env(repo: Path | None = None) -> dict:
    env = dict(os.environ)
    if repo is not None:
        env["PYTHONPATH"] = str(repo)  # the repo's copy of the code runs, so tests can edit it
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # sslpipe and dvc
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.com")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.com")
    return env


def _run(cwd: Path, *cmd: str, ok: bool = True, env: dict | None = None) -> str:
    prefect = {k: v for k, v in (env or {}).items() if k.startswith("PREFECT_")}  # the session's Prefect server
    proc = subprocess.run(cmd, cwd=cwd, env={**_env(cwd), **prefect}, capture_output=True, text=True)
    assert (proc.returncode == 0) == ok, f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _changed(repo: Path) -> set[str]:
    """The stages `dvc status` reports as changed."""
    return set(json.loads(_run(repo, "dvc", "status", "--json")))


def _edit(repo: Path, path: str, line: str) -> None:
    with open(repo / path, "a") as fh:
        fh.write(line + "\n")


def _record(repo: Path, stage: str) -> dict:
    return json.loads((repo / ".sslpipe" / "stamps" / f"{stage}.json").read_text())


def _ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, fmnist_folder) -> Path:
    repo = tmp_path_factory.mktemp("dvcrepo")
    for name in ("ssl_components", "flows"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(fmnist_folder, repo / "images")
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params("images"), sort_keys=False))
    (repo / ".gitignore").write_text("/mlflow/\n")
    _run(repo, "git", "init", "-q")
    _run(repo, "dvc", "init", "-q")
    _run(repo, "dvc", "config", "core.analytics", "false")
    _run(repo, "sslpipe", "dvc-yaml")
    _run(repo, "git", "add", "-A")
    _run(repo, "git", "commit", "-qm", "tiny project")
    return repo


def test_repro_runs_all_stages_then_nothing(repo):
    first = _run(repo, "dvc", "repro")
    assert _ran(first) == ["ingest", "validate", "cache_views", "pretrain", "evaluate", "register"]
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    outs = {o["path"]: o for o in lock["stages"]["ingest"]["outs"]}
    assert len(outs["data/manifest.parquet"]["md5"]) == 32  # data versioned by hash in dvc.lock
    assert (repo / "reports" / "registry.json").is_file()

    second = _run(repo, "dvc", "repro")
    assert _ran(second) == []
    assert "up to date" in second.lower()

    metrics = _run(repo, "dvc", "metrics", "show", "--json")
    assert "linear_probe_acc" in metrics


def test_changing_one_section_reruns_only_its_stages(repo):
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["evaluate"]["probe_epochs"] = 12
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert _changed(repo) == {"evaluate", "register"}  # register reads evaluate: the champion is re-scored the same way
    assert _ran(_run(repo, "dvc", "repro")) == ["evaluate", "register"]

    raw["pretrain"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    ran = _ran(_run(repo, "dvc", "repro"))
    assert ran[:2] == ["pretrain", "evaluate"] and not {"ingest", "validate", "cache_views"} & set(ran)


def test_code_edits_rerun_exactly_the_stages_that_import_the_code(repo):
    assert _changed(repo) == set()
    _edit(repo, "ssl_components/losses/nt_xent.py", "LOSS_EDITED = True")
    assert _changed(repo) == {"pretrain"}
    before = _record(repo, "pretrain")["finished"]
    # pretrain trains again from epoch 0; its history (timings) is new, so evaluate and register follow, and the
    # register stage finds the very same encoder already registered
    assert _ran(_run(repo, "dvc", "repro")) == ["pretrain", "evaluate", "register"]
    record = _record(repo, "pretrain")
    assert record["finished"] > before and record["result"]["resumed_from_epoch"] == 0 and record["result"]["epochs"] == 1
    assert json.loads((repo / "reports" / "registry.json").read_text())["registered"] is False

    _edit(repo, "ssl_components/augment.py", "AUGMENT_EDITED = True")
    assert _changed(repo) == {"cache_views", "pretrain"}
    assert _ran(_run(repo, "dvc", "repro"))[:2] == ["cache_views", "pretrain"]
    assert _record(repo, "pretrain")["result"]["resumed_from_epoch"] == 0

    _edit(repo, "ssl_components/pretext.py", "PRETEXT_EDITED = True")
    assert _changed(repo) == {"pretrain"}


def test_the_flow_and_dvc_agree_on_what_is_stale(repo, prefect_server):
    # the pretext edit of the test above: the Prefect flow retrains from epoch 0 ...
    out = _run(repo, "sslpipe", "run", env=prefect_server)
    assert "stages run: pretrain, evaluate, register" in out and _record(repo, "pretrain")["result"]["resumed_from_epoch"] == 0
    trained = _record(repo, "pretrain")["finished"]
    encoder = (repo / "models" / "encoder.pt").read_bytes()
    # ... and dvc repro, whose dvc.lock is older, runs the stage's command, which finds it up to date
    assert _changed(repo) == {"pretrain", "evaluate", "register"}
    out = _run(repo, "dvc", "repro")
    assert _ran(out) == ["pretrain", "evaluate", "register"]
    assert all(f"stage {s}: up to date" in out for s in ("pretrain", "evaluate", "register"))
    assert _record(repo, "pretrain")["finished"] == trained  # no training (DVC may re-link the file from its cache)
    assert (repo / "models" / "encoder.pt").read_bytes() == encoder
    assert _changed(repo) == set()
    assert "nothing changed" in _run(repo, "sslpipe", "run", env=prefect_server)


def test_dvc_repro_is_refused_while_another_run_holds_the_workspace(repo):
    hold = (
        "import time\n"
        "from flows.workspace import workspace\n"
        "from ssl_components.config import load_config\n"
        "with workspace(load_config('params.yaml'), command='sslpipe run (the other one)'):\n"
        "    print('locked', flush=True)\n"
        "    time.sleep(300)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold], cwd=repo, env=_env(repo), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        raw = yaml.safe_load((repo / "params.yaml").read_text())
        raw["evaluate"]["knn_k"] = 11
        (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        out = _run(repo, "dvc", "repro", ok=False)
        assert f"is in use by sslpipe run (the other one) (pid {holder.pid} on " in out
    finally:
        holder.kill()
        holder.wait()
    assert _ran(_run(repo, "dvc", "repro")) == ["evaluate", "register"]  # the holder is gone: its lock is taken over


def test_a_new_import_makes_dvc_yaml_out_of_date_with_a_clear_error(repo):
    _edit(repo, "flows/steps/evaluate.py", "import ssl_components.augment  # noqa: E402,F401")
    out = _run(repo, "dvc", "repro", ok=False)
    assert "dvc.yaml is out of date for stage evaluate (its code, inputs or settings changed); run `sslpipe dvc-yaml`" in out
    _run(repo, "sslpipe", "dvc-yaml")
    assert "ssl_components/augment.py" in yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]["evaluate"]["deps"]
    assert _ran(_run(repo, "dvc", "repro")) == ["evaluate"]
