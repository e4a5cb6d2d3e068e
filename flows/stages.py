"""The pipeline's stages, each written once, and the one way to run one.

`STAGES` is the one list of stages, in order, with the params sections, inputs and outputs of each; a stage's
body is `run(cfg, keys)` in `flows/steps/<name>.py` and its code dependencies are that module's import
closure (flows/codedeps.py). The Prefect flow (flows/pipeline.py) runs every stage through `execute`;
`dvc.yaml` is generated from the same list (`sslpipe dvc-yaml`) and runs each stage through `sslpipe stage NAME`,
which calls `execute` too. `execute` runs a stage only when its record (flows/records.py) says it is stale.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flows import records
from flows.codedeps import module_closure
from ssl_components import layout
from ssl_components.config import Config
from ssl_components.errors import ConfigError, PipelineError

log = logging.getLogger(__name__)


class StaleInput(PipelineError):
    """A stage was asked to run on the outputs of a stage that is out of date."""


@dataclass(frozen=True)
class Out:
    path: str  # "{data}/manifest.parquet"; roots: data, models, reports
    kind: str = "outs"  # outs | metrics | plots (how dvc.yaml lists it)
    # versioned by DVC (hashed in dvc.lock, cached, pushed, pulled). False: large working data that is cheap to make
    # again (the view cache, checkpoints); the stage's record stands for it in dvc.yaml, so a clone that pulled
    # everything else is up to date, and a missing one is made again by the next run
    dvc: bool = True
    recorded: bool = True  # part of the stage's result, checked for freshness (False: working state, e.g. checkpoints)


@dataclass(frozen=True)
class Stage:
    name: str
    sections: tuple[str, ...]  # params.yaml sections it reads (besides seed and paths)
    deps: tuple[str, ...] = ()  # inputs: "{data}/manifest.parquet", or "{source}" for the user's images
    outs: tuple[Out, ...] = ()
    retries: int = 0  # Prefect retries, for failures that can be transient

    @property
    def module(self) -> str:
        return f"flows.steps.{self.name}"

    def code_files(self) -> tuple[str, ...]:
        """The project source files this stage depends on (derived from its imports)."""
        return module_closure(self.module)

    def run(self, cfg: Config, keys: dict[str, str]) -> dict:
        return importlib.import_module(self.module).run(cfg, keys)

    def resolve(self, cfg: Config, template: str) -> list[Path]:
        """A path template as paths; "{source}" is the user's image folder or manifest (none for Fashion-MNIST)."""
        if template == "{source}":
            return [Path(cfg.ingest.path)] if cfg.ingest.path is not None else []
        roots = {"data": cfg.paths.data, "models": cfg.paths.models, "reports": cfg.paths.reports}
        return [Path(template.format(**roots))]

    def dep_paths(self, cfg: Config) -> list[Path]:
        return [p for d in self.deps for p in self.resolve(cfg, d)]

    def out_paths(self, cfg: Config, recorded_only: bool = True) -> list[Path]:
        return [p for o in self.outs if o.recorded or not recorded_only for p in self.resolve(cfg, o.path)]


def _data(name: str) -> str:
    return "{data}/" + name


def _models(name: str) -> str:
    return "{models}/" + name


def _reports(name: str) -> str:
    return "{reports}/" + name


DATA = (_data(layout.MANIFEST), _data(layout.STORE))
VALIDATED = (*DATA, _data(layout.QUARANTINE))

STAGES: list[Stage] = [
    Stage(
        "ingest",
        ("ingest",),
        deps=("{source}",),
        retries=2,
        # the class list is read back so that every class keeps its id when the data grows
        outs=(Out(_data(layout.MANIFEST)), Out(_data(layout.STORE)), Out(_data(layout.CLASSES))),
    ),
    Stage(
        "validate",
        ("validate",),
        deps=(*DATA, _data(layout.CLASSES)),
        outs=(
            Out(_data(layout.QUARANTINE)),
            Out(_reports(layout.VALIDATION_MD)),
            Out(_reports(layout.REJECTED)),
            Out(_reports(layout.VALIDATION_JSON), kind="metrics"),
        ),
    ),
    Stage(
        "cache_views",
        ("cache_views",),
        deps=VALIDATED,
        outs=(Out(_data(layout.VIEWS), dvc=False),),
    ),
    Stage(
        "pretrain",
        ("pretrain", "cache_views"),
        deps=(*VALIDATED, _data(layout.VIEWS)),
        outs=(
            Out(_models(layout.ENCODER)),
            Out(_models(layout.HISTORY)),
            Out(_models(Path(layout.CHECKPOINT).parent.as_posix()), dvc=False, recorded=False),
        ),
    ),
    Stage(
        "evaluate",
        ("evaluate",),
        deps=(*VALIDATED, _data(layout.CLASSES), _models(layout.ENCODER), _models(layout.HISTORY)),
        outs=(Out(_reports(layout.METRICS), kind="metrics"), Out(_reports(layout.PLOTS), kind="plots")),
    ),
    Stage(
        # reads the data too: the champion is scored again on the current test split
        "register",
        ("register", "evaluate"),
        deps=(
            *VALIDATED,
            _models(layout.ENCODER),
            _models(layout.HISTORY),
            _reports(layout.METRICS),
            _reports(layout.PLOTS),
            _reports(layout.VALIDATION_MD),
        ),
        outs=(Out(_reports(layout.REGISTRY)),),
        retries=2,
    ),
]
STAGE_NAMES = [s.name for s in STAGES]


def get_stage(name: str) -> Stage:
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise ConfigError(f"unknown stage {name!r}; use one of {', '.join(STAGE_NAMES)}")


def upstream(stage: Stage) -> list[Stage]:
    """The stages whose outputs `stage` reads, directly or through other stages, in pipeline order."""
    needed = set(stage.deps)
    found: list[Stage] = []
    for earlier in reversed(STAGES[: STAGES.index(stage)]):
        if needed & {o.path for o in earlier.outs}:
            found.append(earlier)
            needed |= set(earlier.deps)
    return found[::-1]


def execute(stage: Stage, cfg: Config, lock: Any = None, force: bool = False) -> tuple[dict, bool]:
    """Run `stage` unless its record says it is up to date. Returns (result, whether it ran).

    Refuses to run on the outputs of an out-of-date stage (say, one whose settings changed, or a validation that
    failed): it names that stage and how to bring it up to date. `lock` (flows.workspace.WorkspaceLock) is
    told which stage runs.
    """
    with records.hasher(cfg) as hashes:
        keys = {}
        for up in upstream(stage):
            st = records.status(up, cfg, hashes)
            if not st.fresh:
                raise StaleInput(
                    f"stage {stage.name} needs the outputs of {up.name}, which is out of date ({st.reason}); "
                    f"run `sslpipe stage {up.name}` first, or `sslpipe run`"
                )
            keys[up.name] = st.key
        st = records.status(stage, cfg, hashes)
        if st.fresh and not force:
            assert st.record is not None
            log.info("stage %s: up to date (same inputs, settings and code), nothing to do", stage.name)
            return st.record["result"], False
        log.info("stage %s: running (%s)", stage.name, "forced" if st.fresh else st.reason)
        if lock is not None:
            lock.set_stage(stage.name)
        result = stage.run(cfg, {**keys, stage.name: st.key})
        records.write_record(stage, cfg, st, result, hashes)
        log.info("stage %s: done", stage.name)
        return result, True
