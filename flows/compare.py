"""`sslpipe compare`: every SSL method under one budget, one table beside the baselines.

Each method trains in its own process (so peak memory is its own) on the same validated data, the same
random subset of train images, the same epochs and the same view code, then is evaluated by the same
`evaluate_all` as the pipeline; the baselines are measured with the first method of each backbone and given to
the others. A method whose settings and data are unchanged since its last result is reused (delete
models/compare/<method> to retrain it). Results go to `reports/compare.{json,md}` and to MLflow: one parent run
with a nested run per method.
"""

from __future__ import annotations

import json
import logging
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from ssl_components import metrics as names
from ssl_components.config import Config, load_config
from ssl_components.io import read_json, write_json, write_text

log = logging.getLogger(__name__)
BACKBONE_FOR = {"mae": "vit_tiny"}  # methods that need another backbone family


def method_overrides(method: str, epochs: int, base_backbone: str) -> list[str]:
    return [f"pretrain.method={method}", f"pretrain.epochs={epochs}", f"pretrain.backbone={BACKBONE_FOR.get(method, base_backbone)}"]


def result_key(cfg: Config, train_images: int | None) -> str:
    """What a method's result depends on: every setting, the subset size, the data version and the code."""
    from flows.codedeps import ROOT, module_closure
    from ssl_components.data.dataset import data_version
    from ssl_components.io import fingerprint, sha256_file

    code = {f: sha256_file(ROOT / f) for f in module_closure(__name__ if __name__ != "__main__" else "flows.compare")}
    return fingerprint(cfg.to_dict(), train_images or 0, data_version(cfg.paths.data), code)


def run_one(cfg: Config, train_images: int | None, out_dir: Path, baselines: dict[str, float] | None = None) -> dict:
    """Pretrain cfg.pretrain.method on (a subset of) the train split and evaluate it with the baselines, or, given
    `baselines` an earlier method of the same backbone measured, with those (not measured again). Runs in a child
    process."""
    from ssl_components.data import load_dataset
    from ssl_components.data.store import take_rows
    from ssl_components.device import resolve_device
    from ssl_components.evaluation import evaluate_saved_encoder
    from ssl_components.io import fingerprint
    from ssl_components.layout import ENCODER
    from ssl_components.training import pretrain
    from ssl_components.views import ViewProvider

    train, test = load_dataset(cfg.paths.data, "train"), load_dataset(cfg.paths.data, "test")
    images, labels = train.images, train.labels
    if train_images and train_images < len(images):
        pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed))[:train_images].sort().values
        images, labels = take_rows(images, pick), labels[pick]
    views_cfg = cfg.cache_views.model_copy(update={"mode": "online"})  # same augmentation code, no shards
    device = str(resolve_device(cfg.pretrain.device))
    views = ViewProvider(views_cfg, images, out_dir / "views", cfg.seed, "compare", device=device)
    key = fingerprint(cfg.pretrain.identity(), views_cfg.model_dump(mode="json"), len(images), cfg.seed)
    t0 = time.perf_counter()
    trained = pretrain(cfg.pretrain, views, len(images), tuple(images.shape[1:]), out_dir, cfg.seed, key, monitor_data=(images, labels))
    pretrain_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    metrics = evaluate_saved_encoder(out_dir / ENCODER, train, test, cfg.evaluate, cfg.seed, device, baselines is None)["metrics"]
    return {
        "key": result_key(cfg, train_images),
        "method": cfg.pretrain.method,
        "backbone": cfg.pretrain.backbone,
        "epochs": trained["epochs"],
        "train_images": len(images),
        "pretrain_s": pretrain_s,
        "evaluate_s": time.perf_counter() - t1,
        "images_per_s": trained["images_per_s"],
        "final_loss": trained["final_loss"],
        "device": trained["device"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": {**metrics, **(baselines or {})},
    }


def _table(results: list[dict]) -> str:
    pct = lambda v: "—" if v is None else f"{100 * v:.1f}"  # noqa: E731
    row = lambda cells: "| " + " | ".join(cells) + " |"  # noqa: E731
    present = {k for r in results for k in r["metrics"]}
    columns = [names.KNN, names.LINEAR_PROBE, *(names.finetune(f) for f in names.finetune_fractions(present))]
    head = ["method", "backbone", *(names.label(c) for c in columns), "pretrain time", "images/s", "peak memory"]
    lines = [row(head), "|" + "---|" * len(head)]
    for r in sorted(results, key=lambda r: -r["metrics"][names.LINEAR_PROBE]):
        m = r["metrics"]
        cells = [pct(m.get(c)) for c in columns]
        lines.append(
            row(
                [
                    r["method"],
                    r["backbone"],
                    *cells,
                    f"{r['pretrain_s'] / 60:.1f} min",
                    f"{r['images_per_s']:.0f}",
                    f"{r['peak_rss_mb']:.0f} MB",
                ]
            )
        )
    baseline_of = {(label, c): b for c, baselines in names.comparisons(present) for label, b in baselines}
    seen = set()
    for r in results:  # baselines, measured in the same runs with the same code (raw pixels once, the others per backbone)
        for label in sorted({label for label, _ in baseline_of}, key=["raw pixels", "random init", "supervised from scratch"].index):
            backbone = "—" if label == "raw pixels" else r["backbone"]
            if (label, backbone) in seen:
                continue
            seen.add((label, backbone))
            cells = [pct(r["metrics"].get(baseline_of[(label, c)])) if (label, c) in baseline_of else "—" for c in columns]
            lines.append(row([f"*{label}*", backbone, *cells, "—", "—", "—"]))
    return "\n".join(lines) + "\n"


def _machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    import os

    return f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}, torch {torch.__version__}"


def compare(
    params: str, profile: str | None, overrides: list[str], methods: list[str], epochs: int | None, train_images: int | None
) -> list[dict]:
    """`epochs` None: the profile's `pretrain.epochs`; `train_images` None or 0: every train image (the budget users run)."""
    from flows.workspace import workspace

    cfg = load_config(params, profile=profile, overrides=overrides)
    epochs = cfg.pretrain.epochs if epochs is None else epochs
    with workspace(cfg, command="sslpipe compare") as lock:
        return _compare(cfg, lock, params, profile, overrides, methods, epochs, train_images)


def _compare(
    cfg: Config, lock, params: str, profile: str | None, overrides: list[str], methods: list[str], epochs: int, train_images: int | None
) -> list[dict]:
    from flows.registry import _experiment_id, _mlflow
    from flows.stages import execute, get_stage
    from ssl_components.data.dataset import data_version

    for name in ("ingest", "validate"):  # the same validated data as the pipeline (skipped when up to date)
        execute(get_stage(name), cfg, lock)
    root = cfg.paths.models / "compare"
    results = []
    # Baselines (raw pixels, random init, supervised from scratch) depend on the data, the evaluate settings, the seed,
    # the code and the backbone, not on the method: one result per backbone gives them to every method of that backbone
    # (a stored result matches today's key, so its baselines are today's).
    baselines: dict[str, dict[str, float]] = {}
    for i, method in enumerate(methods):
        out = root / method
        mcfg = load_config(params, profile=profile, overrides=[*overrides, *method_overrides(method, epochs, cfg.pretrain.backbone)])
        done = out / "result.json"
        result = read_json(done) if done.is_file() else {}
        if result.get("key") == result_key(mcfg, train_images):
            log.info("compare: %d/%d %s: reusing %s (same settings and data)", i + 1, len(methods), method, done)
        else:
            known = baselines.get(mcfg.pretrain.backbone)
            log.info("compare: %d/%d %s%s", i + 1, len(methods), method, " (baselines of an earlier method)" if known else "")
            cmd = [sys.executable, "-m", "flows.compare", "--params", params, "--out", str(out), "--train-images", str(train_images or 0)]
            if profile:
                cmd += ["--profile", profile]
            for o in [*overrides, *method_overrides(method, epochs, cfg.pretrain.backbone)]:
                cmd += ["--set", o]
            if known:  # the child writes its result whole, baselines included: a kill leaves no result without them
                cmd += ["--baselines", json.dumps(known)]
            subprocess.run(cmd, check=True)
            result = read_json(done)
        baselines.setdefault(result["backbone"], {k: v for k, v in result["metrics"].items() if not names.is_encoder_metric(k)})
        results.append(result)

    table = _table(results)
    from ssl_components.methods import METHODS

    # the command that reproduces this table (a subset of methods is named; --train-images 0 is every image)
    command = "sslpipe compare " + " ".join(
        [
            *([f"--methods {','.join(methods)}"] if set(methods) != set(METHODS) else []),
            *([f"--profile {profile}"] if profile else []),
            f"--epochs {epochs}",
            f"--train-images {train_images or 0}",
            *[f"--set {o}" for o in overrides],
        ]
    )
    md = (
        f"Command: `{command}` (profile {cfg.profile}, seed {cfg.seed})\n\nMachine: {_machine()}\n\n"
        f"Pretraining: {epochs} epochs on {results[0]['train_images']} train images each; evaluation on the full "
        f"labelled train split and the test split.\n\n{table}"
    )
    write_json(cfg.paths.reports / "compare.json", results)
    write_text(cfg.paths.reports / "compare.md", md)

    mlflow = _mlflow(cfg)
    experiment_id = _experiment_id(cfg)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"compare-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={"kind": "method-comparison", "data_version": data_version(cfg.paths.data)},
    ):
        mlflow.log_params({"epochs": epochs, "train_images": train_images or "all", "methods": ",".join(methods)})
        mlflow.log_text(md, "compare.md")
        for r in results:
            with mlflow.start_run(
                experiment_id=experiment_id, run_name=r["method"], nested=True, tags={"method": r["method"], "backbone": r["backbone"]}
            ):
                mlflow.log_params({"method": r["method"], "backbone": r["backbone"], "epochs": r["epochs"]})
                mlflow.log_metrics(
                    {**r["metrics"], "pretrain_s": r["pretrain_s"], "images_per_s": r["images_per_s"], "peak_rss_mb": r["peak_rss_mb"]}
                )
    print(md)
    return results


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description="one method of `sslpipe compare` (run in its own process)")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--profile")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", required=True)
    p.add_argument("--train-images", type=int, default=0)
    p.add_argument("--baselines", help="JSON: baseline metrics an earlier method of this backbone measured (not measured again)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = load_config(args.params, profile=args.profile, overrides=args.set)
    out = Path(args.out)
    write_json(out / "result.json", run_one(cfg, args.train_images or None, out, json.loads(args.baselines) if args.baselines else None))


if __name__ == "__main__":
    main()
