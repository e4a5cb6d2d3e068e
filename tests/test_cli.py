"""What a user sees from `sslpipe` on bad input: exit code 2 and one clear line, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

SSLPIPE = [sys.executable, "-m", "flows.cli"]


def _sslpipe(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*SSLPIPE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    return tmp_path


@pytest.mark.parametrize(
    "args, first_line",
    [
        (["stage", "ingest", "--set", "pretrain.epochz=3"], "error: params.yaml: unknown key 'pretrain.epochz'"),
        (["run", "--set", "pretrain.lr=-1"], "error: params.yaml: pretrain.lr: Input should be greater than 0"),
        (["stage", "ingest", "--set", "ingest.source=folder", "--set", "ingest.path=empty"], "error: empty: no image files found"),
        (["stage", "ingest", "--set", "ingest.source=manifest", "--set", "ingest.path=none.csv"], "error: none.csv: manifest not found"),
        (["stage", "validate"], "error: stage validate needs the outputs of ingest, which is out of date (it has not run here yet)"),
        (["stage", "pretrain", "--profile", "huge"], "error: params.yaml: profile 'huge' is not defined"),
    ],
)
def test_bad_input_gives_one_clear_line(project, args, first_line):
    (project / "empty").mkdir()
    proc = _sslpipe(project, *args)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith(first_line)


def test_bad_manifest_row_is_named(project):
    (project / "m.csv").write_text("path,label,split\na.png,0,train\nb.png,1,trian\n")
    proc = _sslpipe(project, "stage", "ingest", "--set", "ingest.source=manifest", "--set", "ingest.path=m.csv")
    assert proc.returncode == 2
    assert "row 3: split 'trian' is not one of ['train', 'val', 'test']" in proc.stderr


def test_registry_with_no_versions_says_what_to_do(project):
    raw = yaml.safe_load((project / "params.yaml").read_text())
    proc = _sslpipe(project, "registry")
    assert proc.returncode == 0
    assert f"no versions of '{raw['register']['model_name']}'" in proc.stdout
