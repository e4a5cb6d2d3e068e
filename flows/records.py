"""The one answer to "what is stale": each stage's record of the inputs, settings and code it was made from.

After a stage succeeds it writes `<paths.state>/stamps/<stage>.json`: a key (a fingerprint of its params
sections, the content of every source file it imports, and the content of every input file), the parts of that
key (to say *why* a stage is stale), the content hash of every output, and the stage's result. A stage is up to
date only when its record's key equals the key computed now *and* every output still has the recorded content;
a missing, changed or half-written output, or no record at all, makes it stale. A stage that fails writes no
record, so whatever it left cannot pass as fresh.

Both drivers use this: the Prefect flow skips an up-to-date stage, and `sslpipe stage NAME` (what `dvc repro`
runs) returns at once when its stage is up to date, so the two never disagree on what needs work. `dvc.yaml`
is generated from the same stage list, code closure and params sections, so DVC sees the same facts.

Hashing is content-based (sha256); a small sqlite table remembers each file's hash by (size, mtime, inode), so
unchanged large files (the decoded store, view shards, thousands of source images) are not read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ssl_components.io import fingerprint, read_json, write_json

if TYPE_CHECKING:
    from flows.stages import Stage
    from ssl_components.config import Config

HASHES = "hashes.sqlite"
STAMPS = "stamps"
MISSING = "missing"


def _skip(name: str) -> bool:
    """Names a directory hash ignores: hidden files (atomic-write temporaries among them) and bytecode caches."""
    return name.startswith(".") or name == "__pycache__"


class Hasher:
    """Content hashes of files and directories, remembered by (size, mtime_ns, inode) in a sqlite table."""

    def __init__(self, db_path: Path):
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(db_path), timeout=60)
        self.db.execute("CREATE TABLE IF NOT EXISTS hashes (path TEXT PRIMARY KEY, size INT, mtime INT, inode INT, sha256 TEXT)")
        self.dirty = 0

    def close(self) -> None:
        self.db.commit()
        self.db.close()

    def __enter__(self) -> Hasher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def file(self, path: Path) -> str:
        st = path.stat()
        key = str(path.resolve())
        row = self.db.execute("SELECT size, mtime, inode, sha256 FROM hashes WHERE path = ?", (key,)).fetchone()
        if row is not None and tuple(row[:3]) == (st.st_size, st.st_mtime_ns, st.st_ino):
            return str(row[3])
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        digest = h.hexdigest()
        self.db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", (key, st.st_size, st.st_mtime_ns, st.st_ino, digest))
        self.dirty += 1
        if self.dirty >= 1000:
            self.db.commit()
            self.dirty = 0
        return digest

    def path(self, path: Path) -> str:
        """A file's sha256; a directory's hash over its files' relative paths and hashes; MISSING if absent."""
        if path.is_file():
            return self.file(path)
        if not path.is_dir():
            return MISSING
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not _skip(d))
            for name in sorted(n for n in filenames if not _skip(n)):
                f = Path(dirpath) / name
                h.update(f"{f.relative_to(path).as_posix()}\0{self.file(f)}\n".encode())
        return "dir:" + h.hexdigest()


def hasher(cfg: Config) -> Hasher:
    return Hasher(cfg.paths.state / HASHES)


def record_path(cfg: Config, stage_name: str) -> Path:
    return cfg.paths.state / STAMPS / f"{stage_name}.json"


def stage_inputs(stage: Stage, cfg: Config, hashes: Hasher) -> dict[str, Any]:
    """Everything a stage's outputs are made from: params sections, its code (content), its inputs (content)."""
    from flows.codedeps import ROOT

    return {
        "params": {
            "seed": cfg.seed,
            "paths": cfg.paths.model_dump(mode="json"),
            **{s: cfg.section(s).identity() for s in stage.sections},
        },
        "code": {f: hashes.file(ROOT / f) for f in stage.code_files()},
        "deps": {str(p): hashes.path(p) for p in stage.dep_paths(cfg)},
    }


def key_of(inputs: dict[str, Any]) -> str:
    return fingerprint(inputs)


def _changed(old: dict, new: dict) -> list[str]:
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _why(old: dict[str, Any], new: dict[str, Any]) -> str:
    parts = []
    for kind, label in (("params", "settings"), ("code", "code"), ("deps", "inputs")):
        changed = _changed(old.get(kind, {}), new[kind])
        if changed:
            parts.append(f"{label} changed: {', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}")
    return "; ".join(parts) or "made from other inputs"


class Status:
    """Whether a stage is up to date, why not, and its current key and inputs."""

    def __init__(self, fresh: bool, reason: str, key: str, inputs: dict[str, Any], record: dict[str, Any] | None):
        self.fresh, self.reason, self.key, self.inputs, self.record = fresh, reason, key, inputs, record


def status(stage: Stage, cfg: Config, hashes: Hasher) -> Status:
    inputs = stage_inputs(stage, cfg, hashes)
    key = key_of(inputs)
    try:
        record = read_json(record_path(cfg, stage.name))
    except (OSError, ValueError):
        return Status(False, "it has not run here yet", key, inputs, None)
    if record.get("key") != key:
        return Status(False, _why(record.get("inputs", {}), inputs), key, inputs, record)
    for path, digest in record.get("outputs", {}).items():
        now = hashes.path(Path(path))
        if now != digest:
            what = "is missing" if now == MISSING else "was changed since"
            return Status(False, f"output {path} {what}", key, inputs, record)
    return Status(True, "up to date", key, inputs, record)


def write_record(stage: Stage, cfg: Config, st: Status, result: dict[str, Any], hashes: Hasher) -> dict[str, Any]:
    record = {
        "stage": stage.name,
        "key": st.key,
        "inputs": st.inputs,
        "outputs": {str(p): hashes.path(p) for p in stage.out_paths(cfg)},
        "result": json.loads(json.dumps(result, default=str)),
        "finished": time.time(),
    }
    write_json(record_path(cfg, stage.name), record)
    return record
