"""Seconds to register one encoder and to load it back as `@champion`: a fresh sqlite store vs an MLflow server.

    bash scripts/team-mlflow.sh start        # or any MLflow server
    python benchmarks/registry_sqlite_vs_server.py --server http://127.0.0.1:5000 [--encoder models/encoder.pt] [--repeat 3]

Register, in each store, the way the register stage does it: one run, the weights-only `encoder.pt` as an
artifact, the encoder logged with `mlflow.pytorch.log_model` (pt2, with an input example), a new version of a model
named `bench-ssl-encoder-<time>`, alias `champion`. Load: `mlflow.pytorch.load_model("models:/<name>@champion")`.
The two stores take turns within each repeat, in one process, so both see the same machine. Without --encoder,
a fresh quick-profile encoder (small CNN, width 32) is built, or `--backbone resnet18` for a bigger one. The
benchmark's model and runs are deleted from the server afterwards (--keep keeps them); the sqlite store is a
temporary folder.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def build_encoder(args, tmp: Path) -> tuple[torch.nn.Module, Path, str]:
    from ssl_components.backbones import build_backbone, load_encoder, save_encoder

    if args.encoder:
        encoder = load_encoder(args.encoder)
        return encoder, Path(args.encoder), f"{args.encoder}"
    torch.manual_seed(0)
    meta = {"backbone": args.backbone, "width": 32, "in_channels": 1, "image_size": 28, "method": "simclr"}
    encoder = build_backbone(args.backbone, 1, 32).eval()
    path = tmp / "encoder.pt"
    save_encoder(encoder, meta, path)
    encoder = load_encoder(path)
    return encoder, path, f"a fresh {args.backbone} (seed 0)"


def register(uri: str, experiment_id: str, name: str, encoder, path: Path) -> tuple[float, float]:
    """Seconds to (log the run and the model: export, write, upload; register the version and set the alias)."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    meta = dict(encoder.meta)
    example = np.zeros((2, meta["in_channels"], meta["image_size"], meta["image_size"]), dtype=np.float32)
    started = time.perf_counter()
    with mlflow.start_run(experiment_id=experiment_id):
        mlflow.log_artifact(str(path), artifact_path="encoder_state")
        info = mlflow.pytorch.log_model(encoder, name="encoder", input_example=example, metadata=meta)
        logged = time.perf_counter()
        version = mlflow.register_model(info.model_uri, name)
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", str(version.version))
    return logged - started, time.perf_counter() - logged


def load(uri: str, name: str, x: torch.Tensor) -> torch.Tensor:
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.pytorch.load_model(f"models:/{name}@champion")(x)


def timed(fn, *args):
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="tracking URI of the MLflow server, e.g. http://127.0.0.1:5000")
    parser.add_argument("--encoder", default=None, help="an encoder.pt written by the pipeline (default: build one)")
    parser.add_argument("--backbone", default="small_cnn", choices=["small_cnn", "resnet18"], help="without --encoder")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the benchmark's model and runs on the server")
    args = parser.parse_args()

    from flows.tracking import check_tracking_server, prepare_tracking
    from ssl_components.errors import PipelineError

    try:
        prepare_tracking(args.server)
        check_tracking_server(args.server, again=True)
    except PipelineError as exc:
        raise SystemExit(f"error: {exc}") from None
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="bench-registry-") as tmp:
        bench(args, Path(tmp))


def bench(args, tmp: Path) -> None:
    from mlflow import MlflowClient

    encoder, path, described = build_encoder(args, tmp)
    x = torch.zeros(4, encoder.meta["in_channels"], encoder.meta["image_size"], encoder.meta["image_size"])
    with torch.no_grad():
        reference = encoder(x)
    name = f"bench-ssl-encoder-{time.strftime('%Y%m%d-%H%M%S')}"

    sqlite = f"sqlite:///{tmp / 'mlflow.db'}"
    setup_s, sqlite_exp = timed(lambda: MlflowClient(sqlite).create_experiment("bench", artifact_location=(tmp / "artifacts").as_uri()))
    server = MlflowClient(args.server)
    found = server.get_experiment_by_name("sslpipe-bench")
    server_exp = found.experiment_id if found else server.create_experiment("sslpipe-bench")  # the server's default artifacts
    stores = {"sqlite (fresh file)": (sqlite, sqlite_exp), f"server {args.server}": (args.server, server_exp)}
    steps = ("log run + model", "register + alias", "load @champion")
    times: dict[str, dict[str, list[float]]] = {s: {step: [] for step in steps} for s in stores}
    try:
        for _ in range(args.repeat):
            for store, (uri, exp) in stores.items():
                for step, seconds in zip(steps, register(uri, exp, name, encoder, path)):
                    times[store][step].append(seconds)
                seconds, out = timed(load, uri, name, x)
                times[store][steps[2]].append(seconds)
                torch.testing.assert_close(out.detach(), reference, atol=1e-5, rtol=1e-5)  # the same encoder came back
    finally:
        if not args.keep:
            runs = [v.run_id for v in server.search_model_versions(f"name='{name}'")]
            if runs:
                server.delete_registered_model(name)
            for run_id in runs:
                server.delete_run(run_id)

    pt2 = sum(f.stat().st_size for f in (tmp / "artifacts").rglob("*") if f.is_file() and "encoder_state" not in f.parts)
    version_mb = pt2 / args.repeat / 1e6
    print(f"encoder: {described}; weights {path.stat().st_size / 1e6:.2f} MB; one logged version (pt2 model + files) {version_mb:.2f} MB")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"fresh sqlite store created (tables) in {setup_s:.2f} s (not counted below)")
    print(f"seconds, median of {args.repeat} [each repeat]")
    cells = {
        store: [f"{statistics.median(t[step]):.2f} [{', '.join(f'{v:.2f}' for v in t[step])}]" for step in steps]
        for store, t in times.items()
    }
    widths = [max(len(step), *(len(row[k]) for row in cells.values())) + 3 for k, step in enumerate(steps)]
    first = max(len(store) for store in cells) + 3
    print("store".ljust(first) + "".join(step.ljust(w) for step, w in zip(steps, widths)))
    for store, row in cells.items():
        print(store.ljust(first) + "".join(cell.ljust(w) for cell, w in zip(row, widths)))


if __name__ == "__main__":
    main()
