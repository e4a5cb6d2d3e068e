"""Runs that are killed or overlap, in real processes with real signals: the next run finishes with the same
results as an uninterrupted one, nothing half-made is left or used, the registry stays consistent."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import tiny_params, write_fashion_mnist_folder
from servers import SSLPIPE, start, wait_for

pytestmark = pytest.mark.slow
STAGES_ORDER = ["ingest", "validate", "cache_views", "pretrain", "evaluate", "register"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """3,000 real PNG files: enough for each stage to take a moment that a signal can land in."""
    return write_fashion_mnist_folder(tmp_path_factory.mktemp("big") / "images", per_class_train=240, per_class_test=60)


def new_project(root: Path, images: Path) -> Path:
    root.mkdir(parents=True)
    raw = tiny_params(str(images), cache_views={"num_pairs": 20}, pretrain={"epochs": 3})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    return root


def run(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SSLPIPE, "run", *args], cwd=project, env=env, capture_output=True, text=True, timeout=900)


def holder(project: Path) -> dict:
    return json.loads((project / ".sslpipe" / "lock.json").read_text())


def leftovers(project: Path) -> list[Path]:
    return [
        p for d in ("data", "models", "reports", ".sslpipe") for p in (project / d).rglob("*") if re.match(r"^\..+\.(tmp|old)$", p.name)
    ]


def versions(project: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(project / "mlflow" / "mlflow.db") as db:
        return db.execute(
            "SELECT version, tags.value FROM model_versions JOIN model_version_tags tags USING (name, version) "
            "WHERE tags.key = 'encoder_sha256' ORDER BY version"
        ).fetchall()


def run_statuses(project: Path) -> list[str]:
    """Statuses of the MLflow runs; none while MLflow is still creating its tables in a new database file."""
    with sqlite3.connect(project / "mlflow" / "mlflow.db") as db:
        if not db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'runs'").fetchone():
            return []
        return sorted(r[0] for r in db.execute("SELECT status FROM runs"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, images, prefect_server) -> dict:
    """An uninterrupted run: its metrics and registered encoder are what every interrupted sequence must reach."""
    project = new_project(tmp_path_factory.mktemp("reference") / "p", images)
    proc = run(project, prefect_server)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"metrics": json.loads((project / "reports" / "metrics.json").read_text()), "versions": versions(project)}


def kill_during(project: Path, env: dict, stage: str, ready=lambda: True) -> None:
    """Start `sslpipe run`, wait until it is inside `stage` (and `ready()`), then kill -9 its whole process group."""
    proc = start([*SSLPIPE, "run"], env, project / f"killed_in_{stage}.log", project)
    try:
        wait_for(lambda: holder(project).get("stage") == stage and ready(), 600, f"the run to reach {stage}", every=0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (project / ".sslpipe" / "stamps" / f"{stage}.json").exists(), f"the kill came after {stage} finished"


def test_kill_9_in_every_stage_then_the_next_run_finishes_like_an_uninterrupted_one(tmp_path, images, prefect_server, reference):
    project = new_project(tmp_path / "p", images)
    env = prefect_server
    kill_during(project, env, "ingest")
    kill_during(project, env, "cache_views")
    kill_during(project, env, "pretrain", ready=lambda: (project / "models" / "checkpoints" / "last.pt").is_file())

    def mlflow_run_started() -> bool:  # inside register, with the MLflow run open and logging
        return (project / "mlflow" / "mlflow.db").is_file() and "RUNNING" in run_statuses(project)

    kill_during(project, env, "register", ready=mlflow_run_started)
    assert json.loads((project / ".sslpipe" / "stamps" / "pretrain.json").read_text())["result"]["resumed_from_epoch"] >= 1

    final = run(project, env)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "stages run: register" in final.stdout  # everything before register had finished in the runs before
    assert "taking over its lock" in final.stderr  # the killed run's lock was detected and taken over
    assert leftovers(project) == []
    assert json.loads((project / "reports" / "metrics.json").read_text()) == reference["metrics"]
    assert versions(project) == reference["versions"]  # one version, holding the very same encoder
    assert run_statuses(project) == ["FINISHED", "KILLED"]  # the killed register's run is closed, not left running


def test_two_runs_at_once_one_is_refused_one_waits_and_nothing_is_mixed(tmp_path, images, prefect_server, reference):
    project = new_project(tmp_path / "p", images)
    env = prefect_server
    first = start([*SSLPIPE, "run"], env, tmp_path / "first.log", project)
    wait_for(lambda: holder(project).get("stage") == "pretrain", 600, "the first run to reach pretrain", every=0.1)

    refused = run(project, env)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: workspace {project} is in use by sslpipe run (flow run '") and f"(pid {first.pid} on " in line
    assert "Traceback" not in refused.stderr

    waiting = start([*SSLPIPE, "run", "--wait", "900"], env, tmp_path / "waiting.log", project)
    assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()[-3000:]
    assert waiting.wait(timeout=900) == 0, (tmp_path / "waiting.log").read_text()[-3000:]
    log = (tmp_path / "waiting.log").read_text()
    assert "waiting for sslpipe run" in log and "nothing changed: every stage was up to date" in log
    assert json.loads((project / "reports" / "metrics.json").read_text()) == reference["metrics"]
    assert versions(project) == reference["versions"]
    assert not (project / ".sslpipe" / "lock.json").exists()
