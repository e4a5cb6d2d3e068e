"""Work pools end to end: `sslpipe deploy` on a real Prefect server, a real `prefect worker start` runs the flow."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import tiny_params
from servers import BIN, SSLPIPE, start, stop, wait_for

pytestmark = pytest.mark.slow
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
CRON = "30 2 * * 2"
TYPO = "error: params.yaml: unknown key 'pretrain.epochz'; remove it or check its spelling"


def _project(root: Path, fmnist_folder: Path | None = None) -> Path:
    """A workspace: params.yaml with tiny settings and (when given the fmnist folder) a few images per class."""
    project = root / "project"
    project.mkdir()
    if fmnist_folder is not None:
        for split, n in (("train", 16), ("test", 6)):
            for cls in sorted((fmnist_folder / split).iterdir()):
                (project / "images" / split / cls.name).mkdir(parents=True)
                for png in sorted(cls.iterdir())[:n]:
                    shutil.copy(png, project / "images" / split / cls.name / png.name)
    (project / "params.yaml").write_text(yaml.safe_dump(tiny_params("images")))
    return project.resolve()


def _deploy(project: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SSLPIPE, "deploy", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and proc.stderr.strip().splitlines()[-1] == errors[0], proc.stderr[-2000:]
    return errors[0]


def _deployment(api: str, name: str) -> httpx.Response:
    return httpx.get(f"{api}/deployments/name/ssl-pipeline/{name}", timeout=10)


def test_a_process_worker_runs_the_deployed_flow_in_the_workspace(tmp_path, fmnist_folder, prefect_server, monkeypatch):
    env, api, pool = prefect_server, prefect_server["PREFECT_API_URL"], "test-pool"
    project = _project(tmp_path, fmnist_folder)

    proc = _deploy(project, env, "--pool", pool, "--name", "pool-test", "--cron", CRON)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"work pool {pool!r} did not exist: created it (type process)" in proc.stdout
    assert httpx.get(f"{api}/work_pools/{pool}", timeout=10).json()["type"] == "process"
    dep = _deployment(api, "pool-test").json()
    assert dep["work_pool_name"] == pool
    assert [s["schedule"]["cron"] for s in dep["schedules"]] == [CRON]
    assert dep["global_concurrency_limit"]["limit"] == 1 and dep["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert dep["entrypoint"] == "flows.pipeline.ssl_pipeline"
    assert dep["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}]
    assert dep["parameters"] == {"params_path": "params.yaml", "profile": None, "overrides": [], "wait": 6 * 3600}

    # the worker runs elsewhere (tmp_path): the deployment's pull step must take the run to the workspace
    worker_log = tmp_path / "worker.log"
    worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = start([str(BIN / "prefect"), "worker", "start", "--pool", pool], worker_env, worker_log, tmp_path)
    try:

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

        run = wait_for(finished, 600, f"flow run {run_id} (worker log: {worker_log})")
        assert run["state"]["type"] == "COMPLETED", (run["state"], worker_log.read_text()[-3000:])
        assert run["work_pool_name"] == pool
        wait_for(lambda: f"submitting flow run '{run_id}'" in worker_log.read_text(), 30, "the worker to log the run it took")
    finally:
        stop(worker)

    assert (project / "reports" / "registry.json").is_file() and (project / "models" / "encoder.pt").is_file()
    from flows.registry import registry_rows
    from ssl_components.config import load_config

    monkeypatch.chdir(project)
    versions = registry_rows(load_config("params.yaml"))
    assert [v["version"] for v in versions] == ["1"] and "champion" in versions[0]["aliases"]


def test_deploy_checks_the_settings_before_it_deploys(tmp_path, prefect_server):
    api = prefect_server["PREFECT_API_URL"]
    project = _project(tmp_path)
    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["pretrain"]["epochz"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(raw))

    proc = _deploy(project, prefect_server, "--pool", "typo-pool", "--name", "typo-deploy")
    assert _one_error_line(proc) == TYPO
    assert _deployment(api, "typo-deploy").status_code == 404
    assert httpx.get(f"{api}/work_pools/typo-pool", timeout=10).status_code == 404


def test_deploy_with_an_image_needs_a_pool_that_runs_images(tmp_path, prefect_server):
    env, api = prefect_server, prefect_server["PREFECT_API_URL"]
    project = _project(tmp_path)

    missing = _deploy(project, env, "--pool", "gpu-missing", "--image", "registry.example/ssl:1", "--name", "img-missing")
    assert "`prefect work-pool create gpu-missing --type docker`" in _one_error_line(missing)
    assert httpx.get(f"{api}/work_pools/gpu-missing", timeout=10).status_code == 404  # not created as a process pool

    subprocess.run([str(BIN / "prefect"), "work-pool", "create", "proc-pool", "--type", "process"], env=env, check=True, timeout=120)
    wrong = _deploy(project, env, "--pool", "proc-pool", "--image", "registry.example/ssl:1", "--name", "img-wrong")
    assert "work pool 'proc-pool' is a process pool, which runs no images" in _one_error_line(wrong)
    assert _deployment(api, "img-wrong").status_code == 404

    # a docker pool as `prefect work-pool create --type docker` makes one (its template's variables; prefect-docker is
    # not installed here, so no docker worker runs it)
    variables = {"image": {"type": "string"}, "volumes": {"type": "array", "items": {"type": "string"}, "default": ["/cache:/cache"]}}
    template = {
        "job_configuration": {"image": "{{ image }}", "volumes": "{{ volumes }}", "command": "{{ command }}"},
        "variables": {"type": "object", "properties": {**variables, "command": {"type": "string"}}},
    }
    pool = {"name": "docker-pool", "type": "docker", "base_job_template": template}
    httpx.post(f"{api}/work_pools/", json=pool, timeout=10).raise_for_status()
    ok = _deploy(project, env, "--pool", "docker-pool", "--image", "registry.example/ssl:1", "--name", "img-ok", "--cron", CRON)
    assert ok.returncode == 0, ok.stderr[-2000:]
    dep = _deployment(api, "img-ok").json()
    assert dep["job_variables"] == {"image": "registry.example/ssl:1", "volumes": ["/cache:/cache", f"{project}:/workspace"]}
    assert dep["pull_steps"] == [] and dep["entrypoint"] == "flows.pipeline.ssl_pipeline"  # the code is in the image
    assert dep["global_concurrency_limit"]["limit"] == 1 and [s["schedule"]["cron"] for s in dep["schedules"]] == [CRON]


def test_deploy_without_a_server_says_how_to_start_one(tmp_path):
    project = _project(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")} | {"PREFECT_HOME": str(tmp_path / "home")}
    line = _one_error_line(_deploy(project, env, "--pool", "any-pool"))
    assert line.startswith("error: sslpipe deploy needs a Prefect server: start one with `prefect server start`")
