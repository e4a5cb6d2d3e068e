"""The Prefect 3 flow: every stage of flows.stages.STAGES as a task, in order, holding the workspace.

Runs with no server (Prefect starts a temporary one); scheduled runs use `sslpipe serve` with a real server.
Each task runs its stage through `flows.stages.execute`, which skips a stage whose record says it is up to date
(the same rule `sslpipe stage` applies under `dvc repro`), so Prefect's own result cache is not used.
"""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.stages import STAGES, Stage, execute
from flows.summary import summary_rows
from flows.workspace import WorkspaceLock, workspace
from ssl_components import layout
from ssl_components.config import Config, load_config
from ssl_components.errors import PipelineError
from ssl_components.io import read_json


class _NoTracebackForInputErrors(logging.Filter):
    """Bad input or settings (PipelineError) are reported in one line; tracebacks are kept for real bugs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_NoTracebackForInputErrors())


def _transient(task, task_run, state) -> bool:
    """Retry only failures that may go away: not bad input or settings (a registry that did not answer may)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, PipelineError) or getattr(exc, "transient", False)


def _make_task(stage: Stage):
    def run(cfg: Config, lock: WorkspaceLock | None = None) -> tuple[dict, bool]:
        return execute(stage, cfg, lock)

    run.__name__ = run.__qualname__ = f"stage_{stage.name}"
    return task(
        name=stage.name,
        retries=stage.retries,
        retry_delay_seconds=5,
        retry_condition_fn=_transient,
        cache_policy=NO_CACHE,
        persist_result=False,
    )(run)


TASKS = {stage.name: _make_task(stage) for stage in STAGES}


def _run_description() -> str:
    """How this run was started, for anyone who finds the workspace busy."""
    from prefect.runtime import deployment, flow_run

    if deployment.name:
        return f"scheduled run of deployment {deployment.name!r} (flow run {flow_run.name!r})"
    return f"sslpipe run (flow run {flow_run.name!r})"


@flow(name="ssl-pipeline")
def ssl_pipeline(
    params_path: str = "params.yaml", profile: str | None = None, overrides: list[str] | None = None, wait: float = 0.0
) -> dict[str, Any]:
    """ingest -> validate -> cache_views -> pretrain -> evaluate -> register, from params.yaml.

    Holds the workspace for the whole run (waiting up to `wait` seconds for another run to finish). Returns
    {"results": stage -> result, "ran": the stages that did work (the rest were up to date)}.
    """
    cfg = load_config(params_path, profile=profile, overrides=overrides or [])
    results: dict[str, dict] = {}
    ran: list[str] = []
    with workspace(cfg, command=_run_description(), wait=wait) as lock:
        for stage in STAGES:
            results[stage.name], did_run = TASKS[stage.name](cfg, lock)
            if did_run:
                ran.append(stage.name)
    rows = summary_rows(read_json(cfg.paths.reports / layout.METRICS), results["register"])
    create_table_artifact(key="ssl-pipeline-summary", table=rows, description="SSL encoder beside its baselines (test set)")
    create_table_artifact(
        key="ssl-pipeline-stages",
        description="Which stages did work in this run",
        table=[{"stage": s.name, "outcome": "ran" if s.name in ran else "up to date"} for s in STAGES],
    )
    validation = cfg.paths.reports / layout.VALIDATION_MD
    if validation.is_file():
        create_markdown_artifact(key="ssl-pipeline-validation", markdown=validation.read_text())
    return {"results": results, "ran": ran}
