"""The Prefect 3 flow: every stage of flows.stages.STAGES as a task, in order.

Runs with no server (Prefect starts a temporary one); scheduled runs use `sslpipe serve` with a real server.
Tasks are cached on the content of their inputs (the files they read, their params sections and their code),
so an unchanged stage is skipped unless its outputs are gone; register always runs.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.stages import STAGES, Stage, run_stage
from flows.summary import summary_rows
from ssl_components.config import Config, load_config
from ssl_components.errors import PipelineError
from ssl_components.io import fingerprint, read_json


class _NoTracebackForInputErrors(logging.Filter):
    """Bad input or settings (PipelineError) are reported in one line; tracebacks are kept for real bugs."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PipelineError):
            record.exc_info, record.exc_text = None, None
        return True


for _name in ("prefect.task_runs", "prefect.flow_runs"):
    logging.getLogger(_name).addFilter(_NoTracebackForInputErrors())


def _transient(task, task_run, state) -> bool:
    """Retry only failures that may go away: not bad input or settings."""
    return not isinstance(state.result(raise_on_failure=False), PipelineError)


def _content_hash(path: Path) -> str:
    """Files by content; directories by their files' names and sizes, plus small (json/csv/py) files' contents
    and other files' modification times (an image folder: a new, removed or rewritten image changes it)."""
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    elif path.is_dir():
        files = (p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts and not p.name.startswith("."))
        for f in sorted(files):
            h.update(f"{f.relative_to(path)}:{f.stat().st_size}".encode())
            if f.suffix in (".json", ".csv", ".py"):
                h.update(f.read_bytes())
            else:
                h.update(str(f.stat().st_mtime_ns).encode())
    else:
        h.update(b"missing")
    return h.hexdigest()


def stage_cache_key(stage: Stage, cfg: Config) -> str:
    """Changes when the stage's inputs, settings or code change."""
    sections = {s: cfg.section(s).model_dump(mode="json") for s in stage.sections}
    deps = {str(p): _content_hash(p) for p in stage.paths(cfg, "deps")}
    code = {c: _content_hash(Path(__file__).parent.parent / c) for c in stage.code}
    return fingerprint(stage.name, cfg.seed, str(cfg.paths), sections, deps, code)


def _make_task(stage: Stage):
    def run(cfg: Config) -> dict:
        return run_stage(stage.name, cfg)

    run.__name__ = run.__qualname__ = f"stage_{stage.name}"
    options: dict[str, Any] = {"name": stage.name, "retries": stage.retries, "retry_delay_seconds": 5, "retry_condition_fn": _transient}
    if stage.prefect_cache:
        options.update(cache_key_fn=lambda ctx, params: stage_cache_key(stage, params["cfg"]), persist_result=True)
    return task(**options)(run)


TASKS = {stage.name: _make_task(stage) for stage in STAGES}


@flow(name="ssl-pipeline")
def ssl_pipeline(params_path: str = "params.yaml", profile: str | None = None, overrides: list[str] | None = None) -> dict:
    """ingest -> validate -> cache_views -> pretrain -> evaluate -> register, from params.yaml."""
    cfg = load_config(params_path, profile=profile, overrides=overrides or [])
    results = {}
    for stage in STAGES:
        # a cached result only counts while the stage's outputs are still on disk
        missing = not all(p.exists() for p in stage.outputs(cfg))
        results[stage.name] = TASKS[stage.name].with_options(refresh_cache=missing)(cfg)
    rows = summary_rows(read_json(cfg.paths.reports / "metrics.json"), results["register"])
    create_table_artifact(key="ssl-pipeline-summary", table=rows, description="SSL encoder beside its baselines (test set)")
    validation = cfg.paths.reports / "validation.md"
    if validation.is_file():
        create_markdown_artifact(key="ssl-pipeline-validation", markdown=validation.read_text())
    return results
