"""`sslpipe`: run the whole flow, one stage (what dvc.yaml calls), show or promote in the registry, serve a schedule."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ssl_components.errors import PipelineError


def _config(args):
    from ssl_components.config import load_config

    return load_config(args.params, profile=args.profile, overrides=args.set)


def cmd_run(args) -> None:
    from flows.pipeline import ssl_pipeline
    from flows.summary import print_summary, summary_rows
    from ssl_components import layout
    from ssl_components.io import read_json

    cfg = _config(args)  # fail fast on bad settings, before Prefect starts
    if args.push:
        _check_pushable(args)
    out = ssl_pipeline(params_path=args.params, profile=args.profile, overrides=args.set, wait=args.wait)
    print_summary(summary_rows(read_json(cfg.paths.reports / layout.METRICS), out["results"]["register"]))
    ran = out["ran"]
    print("stages run: " + ", ".join(ran) if ran else "nothing changed: every stage was up to date (no training, nothing registered)")
    if args.push:
        cmd_push(args)


def _check_pushable(args) -> None:
    if args.set or args.profile:
        raise PipelineError(
            "push records params.yaml's settings in dvc.lock, so outputs made with --set or --profile would be pushed "
            "under settings they were not made with; put those settings in params.yaml, run, then push"
        )


def cmd_push(args) -> None:
    from flows.dvc import push
    from flows.registry import tag_version
    from flows.workspace import workspace
    from ssl_components import layout
    from ssl_components.io import read_json

    _check_pushable(args)
    cfg = _config(args)
    with workspace(cfg, wait=args.wait):
        pushed = push(cfg)
    registered = read_json(cfg.paths.reports / layout.REGISTRY)
    if pushed["hashes"] and registered.get("version"):
        tag_version(cfg, registered["version"], {**pushed["hashes"], "dvc.remote": pushed["url"]})
    print(f"pushed to DVC remote {pushed['remote']} ({pushed['url']}): {pushed['dvc'].splitlines()[-1] if pushed['dvc'] else 'done'}")
    if pushed["source"]:
        print(f"images: {pushed['source']}")
    print("staged dvc.lock (and the .dvc file of your images) in git: commit them so that a clone can `sslpipe pull` this run")


def cmd_pull(args) -> None:
    from flows.dvc import pull

    pulled = pull()
    print(f"pulled from DVC remote {pulled['remote']}: {pulled['dvc'].splitlines()[-1] if pulled['dvc'] else 'done'}")


def cmd_stage(args) -> None:
    import json

    from flows.stages import execute, get_stage
    from flows.workspace import workspace

    cfg = _config(args)
    stage = get_stage(args.name)
    if os.environ.get("DVC_STAGE"):  # run by `dvc repro`: its dvc.yaml must list what the code now imports
        from flows.dvc import check_stage_current

        check_stage_current(stage.name, args.params)
    with workspace(cfg, wait=args.wait) as lock:
        result, _ = execute(stage, cfg, lock, force=args.force)
    print(json.dumps(result, indent=2, default=str))


def cmd_registry(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from flows.registry import registry_rows

    cfg = _config(args)
    rows = registry_rows(cfg)
    if not rows:
        print(f"no versions of {cfg.register_.model_name!r} in {cfg.register_.tracking_uri} yet; run `sslpipe run` first")
        return
    columns = list(dict.fromkeys(k for row in rows for k in row))
    table = Table(title=f"{cfg.register_.model_name} in {cfg.register_.tracking_uri}")
    for col in columns:
        short = col.removesuffix("_acc").replace("finetune_", "ft ").replace("pct", "%").replace("linear_probe", "probe")
        table.add_column(short.replace("data_version", "data"), no_wrap=True)
    for row in rows:
        table.add_row(*(str(row.get(c, ""))[:8] if c == "run_id" else str(row.get(c, "")) for c in columns))
    Console(width=max(120, Console().width)).print(table)


def cmd_promote(args) -> None:
    from flows.registry import promote_by_hand

    cfg = _config(args)
    promote_by_hand(cfg, str(args.version))
    print(f"{cfg.register_.model_name} v{args.version} is now champion")


def cmd_embed(args) -> None:
    from flows.embed import embed, with_registry

    cfg = with_registry(_config(args), args.tracking_uri)
    print(embed(cfg, args.source, args.out, model=args.model, batch_size=args.batch_size, threads=args.threads).summary())


def cmd_similar(args) -> None:
    from flows.embed import print_neighbours, similar

    print_neighbours(similar(_config(args), args.image, args.index, k=args.k, model=args.model, tracking_uri=args.tracking_uri))


def cmd_serve(args) -> None:
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from flows.pipeline import ssl_pipeline

    _config(args)  # a typo in params.yaml fails now, not at the scheduled hour
    one_at_a_time = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)
    ssl_pipeline.serve(
        name=args.name,
        cron=args.cron,
        global_limit=one_at_a_time,
        limit=1,
        parameters=_flow_parameters(args),
    )


def cmd_deploy(args) -> None:
    from flows.deploy import deploy

    _config(args)  # a typo in params.yaml fails now, not at the scheduled hour
    deployed = deploy(args.pool, args.name, args.cron, _flow_parameters(args), work_queue=args.work_queue, image=args.image)
    print("\n".join(deployed.lines))


def _flow_parameters(args) -> dict:
    """A deployment's flow parameters (`serve`, `deploy`): the settings `sslpipe run` would use here."""
    return {"params_path": args.params, "profile": args.profile, "overrides": args.set, "wait": args.wait}


def _add_schedule_options(p: argparse.ArgumentParser) -> None:
    """The options `serve` and `deploy` share."""
    p.add_argument("--cron", default="0 3 * * 1", help="cron schedule (default: Mondays 03:00)")
    p.add_argument("--name", default="scheduled-retraining")
    p.add_argument(
        "--wait",
        type=float,
        default=6 * 3600,
        metavar="SECONDS",
        help="how long a scheduled run waits for a manual run to free the workspace (default: 6 h)",
    )


def cmd_compare(args) -> None:
    from flows.compare import compare
    from ssl_components.methods import METHODS

    methods = args.methods.split(",") if args.methods else list(METHODS)
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise PipelineError(f"unknown method(s) {unknown}; use some of {sorted(METHODS)}")
    compare(args.params, args.profile, args.set, methods, args.epochs, args.train_images)


def cmd_dvc_yaml(args) -> None:
    from pathlib import Path

    import yaml

    from flows.dvc import dvc_yaml, write_dvc_yaml

    if args.check:
        expected = dvc_yaml(yaml.safe_load(open(args.params)))
        if Path(args.out).read_text() != expected:
            raise PipelineError(f"{args.out} is out of date with flows/stages.py or {args.params}; run `sslpipe dvc-yaml`")
        print(f"{args.out} is up to date")
        return
    print(f"wrote {write_dvc_yaml(args.params, args.out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sslpipe", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="settings file (default: params.yaml)")
    common.add_argument("--profile", default=None, help="profile from params.yaml profiles: (default: its `profile` key)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. pretrain.epochs=2")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", parents=[common], help="run the whole pipeline as a Prefect flow")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for another run to free the workspace")
    p.add_argument("--push", action="store_true", help="after a successful run, push data and outputs to the DVC remote")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("push", parents=[common], help="record the outputs in dvc.lock, push them and your images to the DVC remote")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for another run to free the workspace")
    p.set_defaults(func=cmd_push)
    sub.add_parser("pull", parents=[common], help="fetch the outputs and images dvc.lock names from the DVC remote").set_defaults(
        func=cmd_pull
    )
    from flows.stages import STAGE_NAMES

    p = sub.add_parser("stage", parents=[common], help="run one stage (what dvc.yaml calls)")
    p.add_argument("name", choices=STAGE_NAMES)
    p.add_argument("--force", action="store_true", help="run it even when its record says it is up to date")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="wait this long for another run to free the workspace")
    p.set_defaults(func=cmd_stage)
    sub.add_parser("registry", parents=[common], help="list registered encoder versions, aliases and metrics").set_defaults(
        func=cmd_registry
    )
    p = sub.add_parser("promote", parents=[common], help="make a version the champion by hand")
    p.add_argument("version", type=int)
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("embed", parents=[common], help="embed images with a registered encoder into a Parquet file")
    p.add_argument("source", help="an image file, a folder of images (walked recursively) or a CSV/Parquet manifest with a path column")
    p.add_argument("--out", required=True, help="Parquet file to write (unreadable images go to OUT.errors.csv)")
    p.add_argument("--model", default="champion", help="alias or version number in the registry (default: champion)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: one per core, less one for decoding)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: register.tracking_uri)")
    p.set_defaults(func=cmd_embed)
    p = sub.add_parser("similar", parents=[common], help="the images of an embeddings file most similar to an image")
    p.add_argument("image")
    p.add_argument("--in", dest="index", required=True, help="Parquet file written by `sslpipe embed`")
    p.add_argument("-k", type=int, default=10, help="how many neighbours (default: 10)")
    p.add_argument("--model", default=None, help="embed the query with this alias or version (default: the one that made the file)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: the one recorded in the file)")
    p.set_defaults(func=cmd_similar)
    p = sub.add_parser("serve", parents=[common], help="serve the flow on a cron schedule (needs `prefect server start`)")
    _add_schedule_options(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("deploy", parents=[common], help="deploy the flow to a work pool on a cron schedule, run by `prefect worker start`")
    p.add_argument("--pool", required=True, help="work pool (a missing one is created as a process pool; with --image, create it first)")
    p.add_argument("--work-queue", default=None, help="work queue in the pool (default: the pool's default queue)")
    p.add_argument("--image", default=None, help="run each flow run in this image (a docker pool; see Dockerfile)")
    _add_schedule_options(p)
    p.set_defaults(func=cmd_deploy)
    p = sub.add_parser("compare", parents=[common], help="train every SSL method under one budget, one table with baselines")
    p.add_argument("--methods", default="", help="comma-separated (default: all)")
    p.add_argument("--epochs", type=int, default=None, help="pretraining epochs per method (default: the profile's pretrain.epochs)")
    p.add_argument("--train-images", type=int, default=0, help="pretraining subset per method (default 0: all, as the pipeline)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser("dvc-yaml", parents=[common], help="write dvc.yaml from the stage list (or --check it)")
    p.add_argument("--out", default="dvc.yaml")
    p.add_argument("--check", action="store_true")
    p.set_defaults(func=cmd_dvc_yaml)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The serverless run's temporary server creates its database on the first run of a machine; on a cold 2-core
    # machine that took longer than Prefect's 20 s default and the README's first command failed ("Timed out while
    # attempting to connect to ephemeral Prefect API server"). A started server answers in seconds either way.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    args = build_parser().parse_args(argv)
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(show_path=False, console=Console(stderr=True))
    else:  # a log file or a pipe: whole lines, no wrapping
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[handler])  # logs to stderr, results to stdout
    for noisy in ("alembic", "mlflow.store", "great_expectations", "urllib3", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        args.func(args)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
