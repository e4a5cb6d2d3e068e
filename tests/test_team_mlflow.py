"""The team set-up for real: scripts/team-mlflow.sh starts PostgreSQL and `mlflow server` on free ports, the
pipeline registers through it, the registry commands work through it, and a process that knows only
MLFLOW_TRACKING_URI loads the champion."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml
from conftest import ROOT, tiny_params

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "scripts" / "team-mlflow.sh"
SSLPIPE = [sys.executable, "-m", "flows.cli"]


@dataclass(frozen=True)
class Team:
    dir: Path  # SSLPIPE_TEAM_DIR
    env: dict  # what the script was started with
    uri: str  # the tracking URI it printed
    pg_port: int
    started: str  # what `start` printed


def two_free_ports() -> tuple[int, int]:
    with socket.socket() as a, socket.socket() as b:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        return a.getsockname()[1], b.getsockname()[1]


def script(team_env: dict, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=team_env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def team():
    """`team-mlflow.sh start` into a fresh folder on free ports; `stop` at teardown, also when start failed."""
    home = Path(tempfile.mkdtemp(prefix="sslpipe-team-"))
    home.chmod(0o755)  # the postgres user must reach the cluster inside (pytest's tmp folders are private to root)
    pg_port, ml_port = two_free_ports()
    env = {
        **os.environ,
        "SSLPIPE_TEAM_DIR": str(home),
        "PGPORT": str(pg_port),
        "SSLPIPE_MLFLOW_PORT": str(ml_port),
        "SSLPIPE_MLFLOW_WORKERS": "1",
    }
    try:
        started = script(env, "start", timeout=900)  # a fresh machine installs postgresql first
        assert started.returncode == 0, started.stdout + started.stderr
        yield Team(home, env, f"http://127.0.0.1:{ml_port}", pg_port, started.stdout)
    finally:
        script(env, "stop")
        shutil.rmtree(home, ignore_errors=True)


def sslpipe_env(tmp: Path) -> dict:
    """The environment of an `sslpipe` process: its own Prefect home, nothing pointing at MLflow."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING", "PREFECT_"))}
    return {**env, "PREFECT_HOME": str(tmp / "prefect"), "MLFLOW_ENABLE_TELEMETRY": "false", "GX_ANALYTICS_ENABLED": "false"}


def sslpipe(root: Path, *args: str, timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run([*SSLPIPE, *args], cwd=root, env=sslpipe_env(root.parent), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def project(team, tmp_path_factory, fmnist_folder):
    """A project whose params.yaml points register at the team server (artifact_root empty), after one run."""
    root = tmp_path_factory.mktemp("team_project") / "project"
    root.mkdir()
    raw = tiny_params(fmnist_folder, register={"tracking_uri": team.uri, "artifact_root": ""})
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    run = sslpipe(root, "run")
    assert run.returncode == 0, run.stderr[-4000:]
    return root, json.loads((root / "reports" / "registry.json").read_text())


def client(team):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=team.uri)


def test_start_prints_the_settings_and_is_idempotent(team):
    assert f"tracking_uri: {team.uri}" in team.started and "--set register.artifact_root=" in team.started
    pid = (team.dir / "mlflow.pid").read_text().strip()
    again = script(team.env, "start")
    assert again.returncode == 0, again.stderr
    assert "PostgreSQL already running" in again.stdout and f"mlflow server already running (pid {pid})" in again.stdout
    assert (team.dir / "mlflow.pid").read_text().strip() == pid
    status = script(team.env, "status")
    assert status.returncode == 0 and f"at {team.uri}" in status.stdout and f"127.0.0.1:{team.pg_port}" in status.stdout


def test_start_refuses_a_taken_port_and_a_private_folder_in_one_line(team, tmp_path):
    other = Path(tempfile.mkdtemp(prefix="sslpipe-team-"))
    other.chmod(0o755)
    try:
        taken = script({**team.env, "SSLPIPE_TEAM_DIR": str(other)}, "start")  # PGPORT: the running cluster's
        assert taken.returncode == 1
        assert taken.stderr.strip().splitlines() == [
            f"team-mlflow: error: port {team.pg_port} is taken by another program "
            "(Debian's own cluster? see `pg_lsclusters`); choose another with PGPORT=5433"
        ]
    finally:
        shutil.rmtree(other, ignore_errors=True)
    if os.geteuid() == 0:  # pytest's tmp folders are private to root: the postgres user cannot reach them
        private = script({**team.env, "SSLPIPE_TEAM_DIR": str(tmp_path / "team")}, "start")
        assert private.returncode == 1 and len(private.stderr.strip().splitlines()) == 1
        assert "user postgres cannot write to" in private.stderr and "SSLPIPE_TEAM_DIR" in private.stderr
    assert script(team.env, "status").returncode == 0  # the running set-up was not disturbed


def test_pipeline_registers_v1_through_the_server(team, project):
    root, registered = project
    assert registered["version"] == "1" and registered["registered"] is True
    c = client(team)
    experiment = c.get_experiment_by_name("ssl-pipeline")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    version = c.get_model_version("ssl-encoder", "1")
    assert version.tags["encoder_sha256"] == registered["encoder_sha256"]
    # the gate's decision: the first encoder has no champion to beat, so it takes both aliases
    assert registered["promoted"] is True and version.tags["gate.decision"] == registered["decision"]
    assert c.get_registered_model("ssl-encoder").aliases == {"champion": "1", "challenger": "1"}
    run = c.get_run(version.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    assert [a.path for a in c.list_artifacts(version.run_id, "encoder_state")] == ["encoder_state/encoder.pt"]
    # the bytes are in the server's artifacts folder, and nothing of MLflow's in the project
    stored = list((team.dir / "artifacts").rglob("encoder_state/encoder.pt"))
    assert len(stored) == 1 and stored[0].read_bytes() == (root / "models" / "encoder.pt").read_bytes()
    for local in ("mlflow", "mlruns", "mlartifacts", "mlflow.db"):
        assert not (root / local).exists(), local


def test_a_process_with_only_the_tracking_uri_loads_the_champion(team, project, tmp_path):
    from ssl_components.backbones import load_encoder, normalize

    root, _ = project
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    x = normalize(torch.randint(0, 255, (16, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8))
    np.save(elsewhere / "x.npy", x.numpy())
    code = (
        "import sys, numpy as np, mlflow, torch\n"
        "encoder = mlflow.pytorch.load_model('models:/ssl-encoder@champion')\n"
        "np.save('y.npy', encoder(torch.from_numpy(np.load('x.npy'))).detach().numpy())\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flows', 'ssl_components')))\n"
    )
    # -I: no PYTHON* variables, no user site, not even the current folder on sys.path: only what pip installed
    out = subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=elsewhere,
        env={"MLFLOW_TRACKING_URI": team.uri},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"  # no project code was imported to load it
    with torch.no_grad():
        expected = load_encoder(root / "models" / "encoder.pt")(x).numpy()
    np.testing.assert_allclose(np.load(elsewhere / "y.npy"), expected, atol=1e-5, rtol=1e-5)


def test_the_backend_is_postgresql(team, project):
    import psycopg2

    _, registered = project
    conn = psycopg2.connect(
        host="127.0.0.1", port=team.pg_port, dbname="mlflow", user="mlflow", passfile=str(team.dir / "pgpass"), connect_timeout=10
    )
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version()")
            assert cur.fetchone()[0].startswith("PostgreSQL ")
            cur.execute("SELECT name FROM registered_models")
            assert cur.fetchall() == [("ssl-encoder",)]
            cur.execute("SELECT version, run_id FROM model_versions WHERE name = 'ssl-encoder'")
            assert cur.fetchall() == [(1, registered["run_id"])]
            cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = 'ssl-encoder' ORDER BY alias")
            assert cur.fetchall() == [("challenger", 1), ("champion", 1)]
    finally:
        conn.close()


def test_second_run_with_nothing_changed_registers_nothing(team, project):
    root, _ = project
    again = sslpipe(root, "run")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "nothing changed" in again.stdout
    # the register stage itself, forced: the server already holds this encoder, so the gate adds nothing
    forced = sslpipe(root, "stage", "register", "--force")
    assert forced.returncode == 0, forced.stderr[-3000:]
    result = json.loads(forced.stdout)
    assert result["registered"] is False and result["identical_to"] == "1" and result["version"] == "1"
    assert [v.version for v in client(team).search_model_versions("name='ssl-encoder'")] in (["1"], [1])


def test_registry_and_promote_work_through_the_server(team, project):
    root, _ = project
    listed = sslpipe(root, "registry", timeout=300)
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert f"ssl-encoder in {team.uri}" in listed.stdout
    rows = [line for line in listed.stdout.splitlines() if "champion" in line]
    assert len(rows) == 1 and rows[0].split("│")[1].strip() == "1" and "challenger,champion" in rows[0]
    promoted = sslpipe(root, "promote", "1", timeout=300)
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert promoted.stdout.strip() == "ssl-encoder v1 is now champion"
    assert client(team).get_model_version("ssl-encoder", "1").tags["gate.decision"] == "promoted by hand"


def test_stop_stops_both(team):
    pid = int((team.dir / "mlflow.pid").read_text())
    stopped = script(team.env, "stop")
    assert stopped.returncode == 0, stopped.stderr
    assert "stopping mlflow server" in stopped.stdout and "stopping PostgreSQL" in stopped.stdout
    status = script(team.env, "status")
    assert status.returncode == 1 and "PostgreSQL not running" in status.stdout and "mlflow server not running" in status.stdout
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not (team.dir / "postgres" / "postmaster.pid").exists()
    for port in (team.pg_port, int(team.uri.rsplit(":", 1)[1])):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still answers"
