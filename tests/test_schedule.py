"""Scheduled retraining end to end: `sslpipe serve` on a real Prefect server, runs triggered through Prefect's API."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import tiny_params
from servers import SSLPIPE, start, stop, wait_for

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _copy_images(src: Path, dst: Path, per_class: dict[str, int]) -> None:
    """The first `per_class[split]` images of each class of the fmnist folder."""
    for split, n in per_class.items():
        for cls in sorted((src / split).iterdir()):
            (dst / split / cls.name).mkdir(parents=True, exist_ok=True)
            for png in sorted(cls.iterdir())[:n]:
                shutil.copy(png, dst / split / cls.name / png.name)


def _versions(project: Path, monkeypatch) -> list[dict]:
    from flows.registry import registry_rows
    from ssl_components.config import load_config

    with monkeypatch.context() as m:
        m.chdir(project)
        return registry_rows(load_config("params.yaml"))


@pytest.fixture
def served(tmp_path, fmnist_folder, prefect_server):
    """A project whose folder source holds part of the images, served as a deployment; yields a trigger."""
    project = tmp_path / "project"
    images = project / "images"
    _copy_images(fmnist_folder, images, {"train": 16, "test": 6})
    raw = tiny_params("images")
    (project / "params.yaml").write_text(yaml.safe_dump(raw))
    env = {**prefect_server, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    api = env["PREFECT_API_URL"]
    serve = start([*SSLPIPE, "serve", "--cron", "0 3 * * 1", "--name", "nightly-test"], env, tmp_path / "serve.log", project)
    try:

        def deployment():
            r = httpx.get(f"{api}/deployments/name/ssl-pipeline/nightly-test", timeout=5)
            return r.json() if r.status_code == 200 else None

        dep = wait_for(deployment, 180, f"the deployment (serve log: {tmp_path / 'serve.log'})")

        def trigger() -> dict:
            def create():  # as Prefect's own client does, retry a 503 (the server's database was busy)
                r = httpx.post(f"{api}/deployments/{dep['id']}/create_flow_run", json={}, timeout=10)
                if r.status_code == 503:
                    return None
                r.raise_for_status()
                return r.json()["id"]

            run_id = wait_for(create, 60, "the server to accept a flow run")

            def finished():
                run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()
                return run if run["state"]["type"] in FINAL else None

            return wait_for(finished, 600, f"flow run {run_id} (serve log: {tmp_path / 'serve.log'})")

        yield project, images, dep, trigger, env
    finally:
        stop(serve)


def test_scheduled_runs_retrain_on_new_data_and_skip_unchanged_data(served, fmnist_folder, monkeypatch):
    project, images, dep, trigger, env = served
    assert [s["schedule"].get("cron") for s in dep["schedules"]] == ["0 3 * * 1"]
    assert dep["parameters"]["params_path"] == "params.yaml"
    assert dep["global_concurrency_limit"]["limit"] == 1  # one scheduled run at a time

    def scheduled():  # the server's scheduler has put the next runs of the cron schedule in the calendar
        body = {"flow_runs": {"deployment_id": {"any_": [dep["id"]]}, "state": {"type": {"any_": ["SCHEDULED"]}}}}
        runs = httpx.post(f"{env['PREFECT_API_URL']}/flow_runs/filter", json=body, timeout=10).json()
        return runs if runs else None

    upcoming = wait_for(scheduled, 120, "the scheduler to schedule the cron deployment's runs")
    assert all(r["expected_start_time"][11:16] == "03:00" for r in upcoming)  # Mondays 03:00 (UTC)

    first = trigger()
    assert first["state"]["type"] == "COMPLETED", first["state"]
    versions = _versions(project, monkeypatch)
    assert [v["version"] for v in versions] == ["1"] and "champion" in versions[0]["aliases"]
    encoder = project / "models" / "encoder.pt"

    _copy_images(fmnist_folder, images, {"train": 24, "test": 8})  # new images arrive in the source folder
    second = trigger()
    assert second["state"]["type"] == "COMPLETED", second["state"]
    versions = _versions(project, monkeypatch)
    assert [v["version"] for v in versions] == ["2", "1"]  # retrained and registered (promoted or not by the gate)
    assert versions[0]["gate"].startswith(("promoted", "kept as challenger"))
    trained_at = encoder.stat().st_mtime_ns

    third = trigger()  # nothing changed
    assert third["state"]["type"] == "COMPLETED", third["state"]
    assert encoder.stat().st_mtime_ns == trained_at  # no training
    assert [v["version"] for v in _versions(project, monkeypatch)] == ["2", "1"]  # nothing registered

    for png in sorted((images / "train").rglob("*.png"))[:60]:  # the source goes bad
        png.write_bytes(b"not a png any more")
    failed = trigger()
    assert failed["state"]["type"] == "FAILED"
    first_line = failed["state"]["message"].splitlines()[0]
    assert first_line.startswith("Flow run encountered an exception: DataError: validation failed: 76 of 320 images")


def test_serve_checks_the_settings_before_it_starts(tmp_path, prefect_server):
    raw = tiny_params("images")
    raw["pretrain"]["epochz"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    t0 = time.monotonic()
    proc = subprocess.run(
        [*SSLPIPE, "serve", "--name", "typo"], cwd=tmp_path, env=prefect_server, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and time.monotonic() - t0 < 120
    assert proc.stderr.strip().splitlines()[-1] == "error: params.yaml: unknown key 'pretrain.epochz'; remove it or check its spelling"
    api = prefect_server["PREFECT_API_URL"]
    assert httpx.get(f"{api}/deployments/name/ssl-pipeline/typo", timeout=5).status_code == 404
    assert sys.executable  # the same interpreter ran the CLI


def test_prefects_own_cli_works_against_the_server(prefect_server, tmp_path):
    """`prefect flow-run ls`, `deployment ls` and `work-pool ls` (broken by some fastapi versions with a 422)."""
    from servers import BIN

    for args in (["flow-run", "ls"], ["deployment", "ls"], ["work-pool", "ls"]):
        proc = subprocess.run([str(BIN / "prefect"), *args], env=prefect_server, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"prefect {' '.join(args)}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
        assert "Unprocessable" not in proc.stdout + proc.stderr  # not "422": run ids may contain it
