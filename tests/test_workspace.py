"""One run at a time per workspace: the lock names its holder, waits or refuses, survives kill -9; leftovers
of a killed run are removed by the next one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

from flows.workspace import LOCK, WorkspaceBusy, WorkspaceLock, clean_leftovers, workspace
from ssl_components.config import build_config

HOLD = """
import sys, time
from flows.workspace import workspace
from ssl_components.config import build_config
with workspace(build_config({}), command="holder-under-test"):
    print("locked", flush=True)
    time.sleep(float(sys.argv[1]))
"""


def _holder(cwd: Path, seconds: float = 120) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(seconds)], cwd=cwd, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_is_refused_with_one_line_naming_the_holder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    holder = _holder(tmp_path)
    try:
        with pytest.raises(WorkspaceBusy) as err:
            with workspace(build_config({}), command="second"):
                pass
        message = str(err.value)
        assert "\n" not in message
        assert f"is in use by holder-under-test (pid {holder.pid} on " in message and "--wait" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_waiting_run_gets_the_workspace_when_the_holder_finishes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    holder = _holder(tmp_path, seconds=3)
    t0 = time.monotonic()
    with workspace(build_config({}), command="waiter", wait=60) as lock:
        assert lock.read() is not None and lock.read().command == "waiter"
    assert time.monotonic() - t0 > 1  # it really waited
    assert holder.wait(timeout=30) == 0
    assert not (tmp_path / ".sslpipe" / LOCK).exists()  # released at the end


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    holder = _holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (tmp_path / ".sslpipe" / LOCK).is_file()  # kill -9 left it behind
    with workspace(build_config({}), command="next") as lock:
        assert lock.took_over is not None and lock.took_over.pid == holder.pid
        assert lock.read().command == "next"


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path):
    lock = WorkspaceLock(tmp_path / ".sslpipe", tmp_path)
    lock.acquire("first")
    assert lock.owner is not None
    # same pid, but a process that started at another time: the holder is gone
    stale = {**lock.owner.__dict__, "started": lock.owner.started - 1000, "command": "old run"}
    import json

    (tmp_path / ".sslpipe" / LOCK).write_text(json.dumps(stale))
    other = WorkspaceLock(tmp_path / ".sslpipe", tmp_path)
    other.acquire("second")
    assert other.took_over is not None and other.took_over.command == "old run"


def test_clean_leftovers_removes_only_what_atomic_writes_leave(tmp_path):
    data = tmp_path / "data"
    (data / "cache" / "views" / ".0123456789abcdef.x1y2.tmp").mkdir(parents=True)
    (data / "cache" / "views" / ".0123456789abcdef.x1y2.tmp" / "pair_0000.npy").write_bytes(b"half")
    (data / ".store.npy.abc.npy.tmp").write_bytes(b"half")
    (data / ".views.old").mkdir()
    keep = [data / "store.npy", data / "notes.tmp", data / ".gitignore", data / "cache" / "views" / "0123456789abcdef" / "meta.json"]
    for k in keep:
        k.parent.mkdir(parents=True, exist_ok=True)
        k.write_text("keep")
    removed = clean_leftovers([data])
    assert len(removed) == 3
    assert all(k.exists() for k in keep)
    assert sorted(p.name for p in data.rglob("*") if p.name.startswith(".") and p.name != ".gitignore") == []
