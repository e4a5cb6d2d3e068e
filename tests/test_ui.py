"""What users look at, in a real headless browser: the Prefect UI page of a pipeline run (the link `sslpipe run`
prints) and the MLflow UI pages of the registered version and its run.

One tiny pipeline run on the session's real Prefect server registers v1 in the project's sqlite registry; a real
`mlflow server` serves that registry's UI. Debian's chromium and chromium-driver drive the pages (scripts/test.sh
installs them). Every page is kept as a full-page screenshot in $SSLPIPE_TEST_ARTIFACTS, else
reports/test-artifacts/ui/, and every failure names its screenshot.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import ROOT, tiny_params
from PIL import Image
from servers import BIN, SSLPIPE, free_port, start, stop, wait_for

pytestmark = pytest.mark.slow

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("SSLPIPE_TEST_ARTIFACTS") or ROOT / "reports" / "test-artifacts" / "ui")
TIMEOUT = 60.0  # seconds for a JS page to render what is asserted (the machine may be busy)


@dataclass(frozen=True)
class Project:
    root: Path
    prefect_url: str  # the Prefect server's root URL, where it serves its UI
    flow_run_url: str  # the link `sslpipe run` printed
    flow_run: dict  # the flow run, from Prefect's REST API
    mlflow_url: str
    registered: dict  # reports/registry.json
    experiment_id: str
    run_name: str  # the MLflow run of the registered version
    metrics: dict  # reports/metrics.json
    plots: dict[str, tuple[int, int]]  # the run's plots/*.png, as the server holds them -> (width, height)


@pytest.fixture(scope="module")
def project(tmp_path_factory, fmnist_folder, prefect_server):
    """One `sslpipe run` recorded on the real Prefect server, then `mlflow server` on the project's registry."""
    root = tmp_path_factory.mktemp("ui_project") / "project"
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(fmnist_folder)))
    run = subprocess.run([*SSLPIPE, "run"], cwd=root, env=prefect_server, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    api = prefect_server["PREFECT_API_URL"]
    prefect_url = api.removesuffix("/api")
    printed = re.search(r"View at (\S+/runs/flow-run/([0-9a-f-]{36}))", run.stdout + run.stderr)
    assert printed, f"`sslpipe run` printed no flow run link: {run.stderr[-3000:]}"
    runs = httpx.post(f"{api}/flow_runs/filter", json={"flow_runs": {"id": {"any_": [printed[2]]}}}, timeout=30).json()
    assert len(runs) == 1 and runs[0]["state"]["type"] == "COMPLETED", runs

    registered = json.loads((root / "reports" / "registry.json").read_text())
    port = free_port()
    mlflow_url = f"http://127.0.0.1:{port}"
    home = root.parent / "mlflow-server"
    home.mkdir()
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"]
    cmd += ["--artifacts-destination", str(home / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # no background job runners (GenAI jobs, none of them on these pages): fewer processes on a busy machine
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = start(cmd, env, home / "server.log", home)
    try:
        wait_for(
            lambda: httpx.get(f"{mlflow_url}/health", timeout=2).status_code == 200, 180, f"mlflow server (log: {home / 'server.log'})"
        )
        got = httpx.get(f"{mlflow_url}/api/2.0/mlflow/runs/get", params={"run_id": registered["run_id"]}, timeout=30)
        got.raise_for_status()
        plots = logged_plots(mlflow_url, registered["run_id"])
        yield Project(
            root=root,
            prefect_url=prefect_url,
            flow_run_url=printed[1],
            flow_run=runs[0],
            mlflow_url=mlflow_url,
            registered=registered,
            experiment_id=got.json()["run"]["info"]["experiment_id"],
            run_name=got.json()["run"]["info"]["run_name"],
            metrics=json.loads((root / "reports" / "metrics.json").read_text()),
            plots=plots,
        )
    finally:
        stop(server)


def logged_plots(mlflow_url: str, run_id: str) -> dict[str, tuple[int, int]]:
    """The run's plots/*.png as the MLflow server lists and serves them: name -> (width, height)."""
    listed = httpx.get(f"{mlflow_url}/api/2.0/mlflow/artifacts/list", params={"run_id": run_id, "path": "plots"}, timeout=30)
    listed.raise_for_status()
    sizes = {}
    for entry in listed.json().get("files", []):
        got = httpx.get(f"{mlflow_url}/get-artifact", params={"run_uuid": run_id, "path": entry["path"]}, timeout=30)
        got.raise_for_status()
        sizes[entry["path"].removeprefix("plots/")] = Image.open(io.BytesIO(got.content)).size
    return sizes


@pytest.fixture(scope="module")
def browser():
    """Headless chromium through chromedriver (Debian's packages; no driver download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "needs Debian's chromium and chromium-driver: `bash scripts/test.sh` installs them (apt-get install chromium chromium-driver)"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1600,1200"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(TIMEOUT)
    try:
        yield driver
    finally:
        driver.quit()


def screenshot(driver, name: str) -> Path:
    """The whole page as SHOTS/<name>.png, through the DevTools protocol. Only a page longer than the window is
    captured beyond it: that resizes the page for a moment, which makes MLflow's UI render afresh (its artifact
    tree collapses), so a page that fits (MLflow's scroll inside their own panes) is captured as it is."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size, window = metrics["cssContentSize"], metrics["cssLayoutViewport"]
    args: dict = {"format": "png"}
    if size["height"] > window["clientHeight"] or size["width"] > window["clientWidth"]:
        args |= {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", args)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


def page_text(driver) -> str:
    """The page's text as WebDriver renders it: visible text only, one line per block."""
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text


def wait_until(driver, name: str, shows: Callable[[str], object], what: str) -> tuple[str, Path]:
    """Wait until the page's rendered text `shows` what is expected; screenshot it either way. Returns
    (the page text, the screenshot)."""
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, TIMEOUT, poll_frequency=0.5).until(lambda d: shows(page_text(d)))
    except TimeoutException:
        path = screenshot(driver, name)
        raise AssertionError(
            f"{driver.current_url} did not show {what} within {TIMEOUT:.0f} s; screenshot: {path}\npage text:\n{page_text(driver)[-3000:]}"
        ) from None
    return page_text(driver), screenshot(driver, name)


def click(driver, xpath: str, shot: Path, what: str) -> None:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, TIMEOUT).until(ec.element_to_be_clickable((By.XPATH, xpath))).click()
    except TimeoutException:
        raise AssertionError(f"no {what} to click at {driver.current_url}; screenshot: {shot}") from None


def stage_names() -> list[str]:
    from flows.stages import STAGES

    return [stage.name for stage in STAGES]


def task_runs_shown(stages: list[str]) -> Callable[[str], bool]:
    """The task-run list: '<n> Task runs', '(<n> Completed)', and each stage's run ('<stage>-abc') marked Completed."""

    def shows(text: str) -> bool:
        listed = f"{len(stages)} Task runs\n({len(stages)} Completed)" in text
        return listed and all(re.search(rf"^{re.escape(s)}-[0-9a-f]{{3}}\nCompleted$", text, re.M) for s in stages)

    return shows


def test_run_prints_a_link_to_the_flow_run_on_the_prefect_server(project):
    assert project.flow_run_url == f"{project.prefect_url}/runs/flow-run/{project.flow_run['id']}"


@pytest.mark.parametrize("ui", ["v1", "v2"])
def test_prefect_ui_shows_the_flow_run_completed_with_every_stage_as_a_completed_task_run(project, browser, ui):
    """v1 is what the printed link opens; v2 is the UI the server's root opens by default."""
    run, stages = project.flow_run, stage_names()
    assert stages == ["ingest", "validate", "cache_views", "pretrain", "evaluate", "register"]
    header = f"{run['name']}\nCompleted\n"  # the run's name and its state badge, at the top of the page
    if ui == "v1":
        browser.get(project.flow_run_url)
        text, shot = wait_until(browser, "prefect-v1-flow-run", lambda t: header in t, f"flow run {run['name']!r} as Completed")
        assert f"{len(stages)} Task runs" in text, f"task-run count missing; screenshot: {shot}"
        click(browser, "//li[@role='tab' or contains(@class, 'p-tab')][normalize-space(.)='Task Runs']", shot, "Task Runs tab")
    else:
        browser.get(f"{project.prefect_url}/v2/runs/flow-run/{run['id']}?tab=TaskRuns")
    text, shot = wait_until(browser, f"prefect-{ui}-task-runs", task_runs_shown(stages), f"the {len(stages)} stage task runs, Completed")
    assert header in text, f"flow run {run['name']!r} not shown as Completed; screenshot: {shot}"


def test_mlflow_ui_shows_champion_and_challenger_on_the_registered_version(project, browser):
    reg = project.registered
    assert reg["version"] == "1" and reg["promoted"] is True  # the first encoder takes both aliases
    model = httpx.get(f"{project.mlflow_url}/api/2.0/mlflow/registered-models/get", params={"name": "ssl-encoder"}, timeout=30).json()
    assert {a["alias"]: a["version"] for a in model["registered_model"]["aliases"]} == {"champion": "1", "challenger": "1"}

    browser.get(f"{project.mlflow_url}/#/models/ssl-encoder/versions/1")
    aliases = re.compile(r"^Aliases\n:\n((?:@ \w+\n)+)", re.M)

    def version_aliases(text: str) -> set[str]:
        found = aliases.search(text)
        return set(found[1].replace("@ ", "").split()) if found else set()

    text, shot = wait_until(browser, "mlflow-model-version", lambda t: "Version 1" in t and version_aliases(t), "the version's aliases")
    assert version_aliases(text) == {"champion", "challenger"}, f"aliases on the version page; screenshot: {shot}"
    assert f"Source Run\n:\n{project.run_name}\n" in text, f"source run {project.run_name!r} not shown; screenshot: {shot}"

    browser.get(f"{project.mlflow_url}/#/models/ssl-encoder")

    def row_aliases(text: str) -> set[str]:  # the versions table: 'Version 1', its tags, then '@ alias' lines
        row = text.partition("\nVersion 1\n")[2].partition("\nPrevious\n")[0]
        return {line.removeprefix("@ ") for line in row.split("\n") if line.startswith("@ ")}

    text, shot = wait_until(browser, "mlflow-model", lambda t: row_aliases(t) >= {"champion", "challenger"}, "Version 1 with its aliases")
    assert row_aliases(text) == {"champion", "challenger"}, f"aliases of Version 1 in the versions table; screenshot: {shot}"


def _shown(value: float) -> str:
    """A metric value as MLflow's UI writes it (JavaScript's shortest round-trip form: 1.0 -> '1')."""
    text = repr(float(value))
    return text.removesuffix(".0")


def image_size(driver, alt: str) -> tuple[int, int] | None:
    """(naturalWidth, naturalHeight) of the page's loaded image with this alt text; (0, 0) if it failed to load."""
    size = driver.execute_script(
        "const i = [...document.images].find(i => i.alt === arguments[0]);"
        "return i && i.complete ? [i.naturalWidth, i.naturalHeight] : null;",
        alt,
    )
    return tuple(size) if size else None


def test_mlflow_ui_run_page_shows_the_metrics_and_the_logged_plots(project, browser):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    run_id, metrics = project.registered["run_id"], project.metrics
    assert {"knn_acc", "linear_probe_acc"} <= set(metrics), metrics
    written = sorted(p.name for p in (project.root / "reports" / "plots").glob("*.png"))
    assert sorted(project.plots) == written and len(written) == 4, (project.plots, written)  # every plot was logged
    run_url = f"{project.mlflow_url}/#/experiments/{project.experiment_id}/runs/{run_id}"

    browser.get(run_url)
    rows = {name: re.compile(rf"^{re.escape(name)}\n{re.escape(_shown(v))}$", re.M) for name, v in metrics.items()}
    text, shot = wait_until(browser, "mlflow-run", lambda t: "Metrics (" in t and rows["linear_probe_acc"].search(t), "the metrics table")
    # the metrics table is lower down in the overview's own scrolling pane: bring it into the screenshot
    browser.execute_script(
        "const h = [...document.querySelectorAll('h1,h2,h3,h4,h5,span,div')].find(e => /^Metrics \\(\\d+\\)$/.test(e.innerText));"
        "if (h) h.scrollIntoView({block: 'start'});"
    )
    shot = screenshot(browser, "mlflow-run")
    missing = [f"{name} = {_shown(metrics[name])}" for name, row in rows.items() if not row.search(text)]
    assert not missing, f"metrics not shown with their values: {missing}; screenshot: {shot}"

    browser.get(f"{run_url}/artifacts")
    _, shot = wait_until(browser, "mlflow-run-artifacts", lambda t: "plots" in t.split("\n"), "the plots folder")
    click(browser, "//*[@data-testid='artifact-tree-node'][@artifact-name='plots']", shot, "plots folder")
    names = list(project.plots)
    _, shot = wait_until(browser, "mlflow-run-plots", lambda t: all(n in t.split("\n") for n in names), f"the plots {names}")
    for name, size in project.plots.items():
        click(browser, f"//*[@data-testid='artifact-tree-node'][normalize-space(.)='{name}']", shot, name)
        shot_name, preview = f"mlflow-plot-{name.removesuffix('.png')}", f"plots/{name}"
        _, shot = wait_until(browser, shot_name, lambda t: preview in t, f"the preview of {name}")  # noqa: B023 (called at once)
        try:
            shown = WebDriverWait(browser, TIMEOUT).until(lambda d: image_size(d, preview))  # noqa: B023 (called at once)
        except TimeoutException:
            raise AssertionError(f"{name} is not rendered as an image; screenshot: {shot}") from None
        shot = screenshot(browser, shot_name)
        assert shown == size, f"{name} rendered at {shown}, the logged file is {size}; screenshot: {shot}"
