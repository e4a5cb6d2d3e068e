"""One run at a time per workspace: a lock that names its holder and survives kill -9, and the clean-up of what
a killed run left behind.

The lock is a small JSON file (`<paths.state>/lock.json`) naming the process that holds the workspace: its pid
and start time (so a reused pid is not mistaken for the holder), host, command and current stage. Reading and
writing it happens under a short OS-level file lock, so two runs can never both take it. A lock whose holder
process is gone (killed, crashed, or a finished `dvc repro`) is stale and the next run takes it over.

`sslpipe run` and a scheduled flow run hold it themselves. Under `dvc repro` every stage is its own
`sslpipe stage` process, so the lock is taken on behalf of the `dvc` process: it is held from the first stage
to the end of the whole repro, and the stages of that one repro pass through it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from filelock import FileLock

from ssl_components.config import Config
from ssl_components.errors import PipelineError
from ssl_components.io import write_json

log = logging.getLogger(__name__)
LOCK = "lock.json"
# What atomic writes leave behind when killed: `.<name>.<random><suffix>.tmp` and `.<name>.old`.
_LEFTOVER = re.compile(r"^\..+\.(tmp|old)$")


class WorkspaceBusy(PipelineError):
    """Another live run holds the workspace."""


@dataclass(frozen=True)
class Holder:
    pid: int
    started: float  # the process's start time (psutil create_time): tells a reused pid apart
    host: str
    command: str
    since: float  # when it took the lock
    stage: str | None = None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        stage = f", stage {self.stage}" if self.stage else ""
        return f"{self.command} (pid {self.pid} on {self.host}, since {when}{stage})"

    def alive(self) -> bool | None:
        """True/False on this host; None when it runs on another host (cannot be checked from here)."""
        if self.host != socket.gethostname():
            return None
        try:
            return abs(psutil.Process(self.pid).create_time() - self.started) < 1.0
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return True


def _holder_for(process: psutil.Process, command: str) -> Holder:
    return Holder(process.pid, process.create_time(), socket.gethostname(), command, time.time())


def _dvc_run() -> tuple[psutil.Process, str] | None:
    """The `dvc` process this stage runs under (DVC sets DVC_STAGE for a stage's command) and its command."""
    if not os.environ.get("DVC_STAGE"):
        return None
    for parent in psutil.Process().parents():
        try:
            argv = parent.cmdline()
        except psutil.Error:
            continue
        for i, arg in enumerate(argv[:3]):
            if Path(arg).name in ("dvc", "dvc.exe") or (arg == "dvc" and i and argv[i - 1] == "-m"):
                return parent, " ".join(["dvc", *argv[i + 1 : i + 2]])
    return None


def _owner(command: str) -> Holder:
    """Who takes the lock: the enclosing `dvc repro` for a stage run by DVC, else this process."""
    dvc = _dvc_run()
    if dvc is not None:
        return _holder_for(*dvc)
    return _holder_for(psutil.Process(), command)


def _same_process(a: Holder, b: Holder) -> bool:
    return a.pid == b.pid and a.host == b.host and abs(a.started - b.started) < 1.0


class WorkspaceLock:
    def __init__(self, state_dir: Path, workspace: Path):
        self.state_dir, self.workspace = state_dir, workspace
        self.path = state_dir / LOCK
        self.guard = FileLock(str(state_dir / (LOCK + ".guard")))
        self.owner: Holder | None = None
        self.took_over: Holder | None = None

    def read(self) -> Holder | None:
        try:
            return Holder(**json.loads(self.path.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def _try(self, me: Holder) -> Holder | None:
        """Take the lock if it is free, stale or already ours; else return the live holder."""
        with self.guard:
            current = self.read()
            if current is not None and _same_process(current, me):
                self.owner = current  # a later stage of the same `dvc repro`
                return None
            if current is not None and current.alive() is not False:
                return current
            if current is not None:
                self.took_over = current
            write_json(self.path, asdict(me))
            self.owner = me
            return None

    def acquire(self, command: str, wait: float = 0.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        me = _owner(command)
        deadline = time.monotonic() + wait
        announced = False
        while (holder := self._try(me)) is not None:
            if time.monotonic() >= deadline:
                where = f" (cannot check it from here; if it is gone, delete {self.path})" if holder.alive() is None else ""
                raise WorkspaceBusy(
                    f"workspace {self.workspace} is in use by {holder.describe()}{where}; wait for it to finish"
                    + ("" if wait else " or pass --wait SECONDS")
                )
            if not announced:
                log.info("workspace: waiting for %s to finish (up to %.0f s)", holder.describe(), wait)
                announced = True
            time.sleep(min(2.0, max(0.05, deadline - time.monotonic())))
        if self.took_over is not None:
            log.warning("workspace: the previous holder %s is gone; taking over its lock", self.took_over.describe())

    def set_stage(self, stage: str | None) -> None:
        """Record the running stage in the lock file (shown to anyone who finds the workspace busy)."""
        with self.guard:
            current = self.read()
            if current is not None and self.owner is not None and _same_process(current, self.owner):
                write_json(self.path, {**asdict(current), "stage": stage})

    def release(self) -> None:
        """Remove the lock if this process holds it (a `dvc repro`'s lock stays until that process ends)."""
        with self.guard:
            current = self.read()
            if current is not None and _same_process(current, _holder_for(psutil.Process(), "")):
                self.path.unlink(missing_ok=True)


def clean_leftovers(roots: list[Path]) -> list[Path]:
    """Remove what killed atomic writes left under `roots` (temporary files and folders, `.old` folders).

    Only call this while holding the workspace lock: then no live run can be writing them.
    """
    removed = []
    for root in roots:
        if not root.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in [*dirnames, *filenames]:
                if _LEFTOVER.match(name):
                    path = Path(dirpath) / name
                    if path.is_dir() and not path.is_symlink():
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        path.unlink(missing_ok=True)
                    removed.append(path)
            dirnames[:] = [d for d in dirnames if not _LEFTOVER.match(d)]
    return removed


def owned_roots(cfg: Config) -> list[Path]:
    """Folders the pipeline writes (never the user's source images)."""
    return [cfg.paths.data, cfg.paths.models, cfg.paths.reports, cfg.paths.state]


@contextlib.contextmanager
def workspace(cfg: Config, command: str | None = None, wait: float = 0.0) -> Iterator[WorkspaceLock]:
    """Hold the workspace for a run: lock (waiting up to `wait` seconds), clean leftovers, release at the end."""
    lock = WorkspaceLock(cfg.paths.state, Path.cwd())
    lock.acquire(command or "sslpipe " + " ".join(sys.argv[1:3]), wait)
    try:
        removed = clean_leftovers(owned_roots(cfg))
        if removed:
            log.warning("workspace: removed %d leftover(s) of an interrupted run: %s", len(removed), ", ".join(map(str, removed[:5])))
        yield lock
    finally:
        lock.release()
