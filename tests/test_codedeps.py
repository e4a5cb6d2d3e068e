"""A stage's code dependencies are derived from its imports, so they cannot drift from the code."""

from __future__ import annotations

from flows.codedeps import ROOT, _imported_modules, module_closure


def test_pretrain_depends_on_every_module_its_training_imports():
    files = set(module_closure("flows.steps.pretrain"))
    # the files the old hand-kept list missed, and the method and loss code
    for f in (
        "ssl_components/pretext.py",
        "ssl_components/augment.py",
        "ssl_components/views.py",
        "ssl_components/config.py",
        "ssl_components/losses/nt_xent.py",
        "ssl_components/methods/simclr.py",
        "ssl_components/training.py",
        "flows/steps/pretrain.py",
        "flows/steps/__init__.py",
        "flows/__init__.py",
        "ssl_components/__init__.py",
        "ssl_components/monitor.py",  # the kNN watched while it trains...
        "ssl_components/evaluation.py",  # ...is evaluation's kNN
    ):
        assert f in files, f
    assert "flows/registry.py" not in files and "ssl_components/plots.py" not in files


def test_each_stage_depends_only_on_what_it_imports():
    ingest = set(module_closure("flows.steps.ingest"))
    assert "ssl_components/data/sources.py" in ingest and "ssl_components/data/ingest.py" in ingest
    assert not any(f.startswith(("ssl_components/losses", "ssl_components/methods")) for f in ingest)
    views = set(module_closure("flows.steps.cache_views"))
    assert "ssl_components/augment.py" in views and "ssl_components/training.py" not in views
    evaluate = set(module_closure("flows.steps.evaluate"))
    assert "ssl_components/evaluation.py" in evaluate and "ssl_components/plots.py" in evaluate
    assert "ssl_components/augment.py" not in evaluate  # view code does not move the evaluation


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    pkg = tmp_path / "ssl_components" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "mod.py").write_text(
        "import os\ndef f():\n    from ssl_components.evaluation import knn_accuracy\n    from . import sibling\n    from .. import io\n"
    )
    found = _imported_modules(pkg / "mod.py", "ssl_components.sub.mod")
    assert {
        "ssl_components.evaluation",
        "ssl_components.evaluation.knn_accuracy",
        "ssl_components.sub.sibling",
        "ssl_components.io",
        "os",
    } <= found


def test_closure_paths_exist_and_are_relative():
    for f in module_closure("flows.steps.register"):
        assert (ROOT / f).is_file() and not f.startswith("/")
