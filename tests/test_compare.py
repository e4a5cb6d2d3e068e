"""`sslpipe compare`: methods side by side, with baselines, in reports/ and in MLflow."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml
from conftest import tiny_params

pytestmark = pytest.mark.slow


def test_compare_two_methods_writes_one_table_and_grouped_runs(tmp_path, fmnist_folder):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(fmnist_folder)))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "compare", "--methods", "simclr,vicreg", "--epochs", "1", "--train-images", "200"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "reports" / "compare.json").read_text())
    assert [r["method"] for r in results] == ["simclr", "vicreg"]
    # the baselines are measured once for the backbone (with simclr) and given to vicreg
    baselines = [{k: v for k, v in r["metrics"].items() if k.startswith(("raw_pixel_", "random_init_", "supervised_"))} for r in results]
    assert len(baselines[0]) == 6 and baselines[1] == baselines[0]
    assert proc.stderr.count("evaluate: raw_pixel_knn_acc") == 1 and proc.stderr.count("evaluate: supervised_10pct_acc") == 1
    assert proc.stderr.count("evaluate: knn_acc") == 2
    assert all(r["train_images"] == 200 and r["epochs"] == 1 and r["peak_rss_mb"] > 50 for r in results)
    table = (tmp_path / "reports" / "compare.md").read_text()
    for row in ("| simclr | small_cnn |", "| vicreg | small_cnn |", "| *raw pixels* |", "| *random init* | small_cnn |"):
        assert row in table
    # the table names the command that made it, in a form the CLI accepts
    assert "Command: `sslpipe compare --methods simclr,vicreg --epochs 1 --train-images 200` (profile quick, seed 0)" in table

    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    runs = mlflow.search_runs(experiment_names=["ssl-pipeline"], output_format="list")
    parents = [r for r in runs if r.data.tags.get("kind") == "method-comparison"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(parents) == 1 and sorted(r.data.tags["method"] for r in children) == ["simclr", "vicreg"]
    assert all("linear_probe_acc" in r.data.metrics for r in children)


def test_unknown_method_is_one_clear_line(tmp_path, fmnist_folder):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(fmnist_folder)))
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "compare", "--methods", "simclr,nope"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown method(s) ['nope']")


def _compare(tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "flows.cli", "compare", "--methods", "simclr", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_compare_defaults_to_the_profile_budget_and_reuses_only_an_unchanged_result(tmp_path, fmnist_folder):
    """Without --epochs and --train-images a method trains as the pipeline would (the profile's epochs, every train
    image); a small budget, the default, the small budget again and the default again: each change retrains, an
    unchanged repeat reuses the stored result."""
    from ssl_components.data.dataset import load_dataset

    params = tiny_params(fmnist_folder)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    result = lambda: json.loads((tmp_path / "models" / "compare" / "simclr" / "result.json").read_text())  # noqa: E731
    small = ("--epochs", "1", "--train-images", "200")

    assert "reusing" not in _compare(tmp_path, *small).stderr
    assert (result()["epochs"], result()["train_images"]) == (1, 200)
    assert "reusing" not in _compare(tmp_path).stderr
    every = len(load_dataset(tmp_path / "data", "train"))
    assert every > 200 and (result()["epochs"], result()["train_images"]) == (params["pretrain"]["epochs"], every)
    assert "reusing" not in _compare(tmp_path, *small).stderr  # changed back: retrained, not the default's result
    assert (result()["epochs"], result()["train_images"]) == (1, 200)
    assert "reusing" not in _compare(tmp_path).stderr
    stored = (tmp_path / "models" / "compare" / "simclr" / "result.json").read_bytes()
    assert "simclr: reusing" in _compare(tmp_path).stderr
    assert (tmp_path / "models" / "compare" / "simclr" / "result.json").read_bytes() == stored
    assert json.loads((tmp_path / "reports" / "compare.json").read_text()) == [result()]
    # the command the table names reproduces it: the CLI takes it as written, and it reuses the same result
    named = re.search(r"Command: `sslpipe (.+?)`", (tmp_path / "reports" / "compare.md").read_text())
    assert named, "compare.md names no command"
    args = named.group(1).split()
    assert args == ["compare", "--methods", "simclr", "--epochs", str(params["pretrain"]["epochs"]), "--train-images", "0"]
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "simclr: reusing" in proc.stderr, proc.stderr[-3000:]
