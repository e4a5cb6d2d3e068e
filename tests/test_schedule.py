"""`sslpipe serve` registers the flow as a scheduled deployment on a real Prefect server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_creates_a_cron_deployment(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    bindir = Path(sys.executable).parent
    server = _start([str(bindir / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "server.log")
    serve = None
    try:
        _wait(lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200, 120, "the Prefect server")
        serve = _start(
            [sys.executable, "-m", "flows.cli", "serve", "--cron", "0 3 * * 1", "--name", "nightly-test"], env, tmp_path / "serve.log"
        )

        def deployment():
            r = httpx.get(f"{api}/deployments/name/ssl-pipeline/nightly-test", timeout=5)
            return r.json() if r.status_code == 200 else None

        dep = _wait(deployment, 120, "the deployment (serve log: %s)" % (tmp_path / "serve.log"))
        crons = [s["schedule"].get("cron") for s in dep["schedules"]]
        assert crons == ["0 3 * * 1"]
        assert dep["parameters"]["params_path"] == "params.yaml"
        assert serve.poll() is None  # still serving, waiting for the schedule
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
