"""Every stage's cost as the data grows: seconds, pretraining images/s and peak RSS per stage, on synthetic RGB folders.

    python benchmarks/stage_costs.py --sizes 25000 100000 400000 --root /tmp/stage_costs [--baseline-commit REV]

For each size: a folder of N 64x64 RGB PNGs in 10 class folders (benchmarks/ingest_scaling.py writes it, kept
under --root), a workspace with the project's params.yaml plus: that folder as the source at image_size 64,
channels 3; views made online (a cached view cache of 400k images would be 137 GB, over cache_views.max_gib);
pretraining for one epoch of at most --steps steps; fine-tuning on 1% of the labels for 2 epochs (at least 20
steps): the stages' memory does not depend on how long they train, and 10% of 400k images is an hour of CPU
fine-tuning. Each stage runs as `sslpipe stage NAME` in its own process; its peak RSS is that process's
ru_maxrss (from wait4). "imports" is a process that only imports what the stages import.

`--baseline-commit` also runs the pretrain stage's function of that commit (the in-memory path: the whole train
split and an epoch of views in RAM) and of this tree, alternately, each for one full epoch of the smallest size,
and prints both images/s: the same model, data and settings.
Writes docs/stage_costs.png (peak RSS per stage against the store size) with --plot. Rows are kept in --root's
stage_costs.json; `--stages evaluate` re-measures one stage and keeps the others' rows (after a change to it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest_scaling import SIZE, make_folder  # noqa: E402  (the same synthetic folders)

STAGES = ("ingest", "validate", "cache_views", "pretrain", "evaluate")
IMPORTS = "import torch, pandas, great_expectations, flows.stages, flows.steps.pretrain, flows.steps.evaluate, ssl_components.evaluation"


def _env(pythonpath: Path) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(pythonpath),
        "TQDM_DISABLE": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_ENABLE_TELEMETRY": "false",
        "DO_NOT_TRACK": "1",
    }


def timed(cmd: list[str], cwd: Path, pythonpath: Path = ROOT) -> tuple[str, float, float]:
    """(stdout, seconds, peak RSS MB) of a child process; its stderr goes to ours."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(pythonpath), stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed with exit {proc.returncode}")
    return out, time.perf_counter() - t, usage.ru_maxrss / 1024


def workspace(root: Path, n: int, folder: Path, steps: int | None) -> Path:
    ws = root / f"ws_{n}"
    ws.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"].update(source="folder", path=str(folder), image_size=SIZE, channels=3)
    params["cache_views"].update(mode="online")
    params["pretrain"].update(epochs=1, max_steps_per_epoch=steps)
    params["evaluate"].update(label_fractions=[0.01], finetune_epochs=2, finetune_min_steps=20)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return ws


TRAIN = """
import json, sys, time
from ssl_components.config import load_config
from flows.steps.pretrain import train
sets = ["paths.models=" + sys.argv[1]] + (["pretrain.max_steps_per_epoch=null"] if sys.argv[2] == "new" else [])
cfg = load_config("params.yaml", overrides=sets)
t = time.perf_counter()
r = train(cfg, {"cache_views": "0" * 16, "pretrain": "bench-" + sys.argv[2]})
print(json.dumps({"images_per_s": r["images_per_s"], "seconds": time.perf_counter() - t, "loss": r["final_loss"]}))
"""


def baseline_rows(ws: Path, commit: str, rounds: int) -> list[dict]:
    """The pretrain stage's function, in-memory path (`commit`) and this tree, alternately, one full epoch each."""
    old = ws.parent / f"tree_{commit}"
    if not old.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), commit], check=True, capture_output=True)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["pretrain"].pop("max_steps_per_epoch", None)  # a setting the older code does not know
    params["cache_views"].pop("max_gib", None)
    params["evaluate"].pop("max_feature_images", None)
    params["evaluate"].pop("max_test_images", None)
    (ws / "params_old.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    rows = []
    for r in range(rounds):
        for label, tree in (("in memory (before)", old), ("from disk, views per batch", ROOT)):
            old_run = tree is old
            if old_run:
                os.replace(ws / "params.yaml", ws / "params_new.yaml")
                os.replace(ws / "params_old.yaml", ws / "params.yaml")
            try:
                out, seconds, rss = timed(
                    [sys.executable, "-c", TRAIN, f"models_bench_{r}_{old_run}", "old" if old_run else "new"], ws, tree
                )
            finally:
                if old_run:
                    os.replace(ws / "params.yaml", ws / "params_old.yaml")
                    os.replace(ws / "params_new.yaml", ws / "params.yaml")
            res = json.loads(out.strip().splitlines()[-1])
            rows.append({"round": r + 1, "path": label, "images_per_s": res["images_per_s"], "loss": res["loss"], "rss_mb": rss})
            print(f"| {r + 1} | {label} | {res['images_per_s']:,.0f} | {res['loss']:.4f} | {rss:,.0f} |", flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    stores = [r["store_mb"] / 1024 for r in rows]
    for stage in STAGES:
        ax.plot(stores, [r[stage]["rss_mb"] / 1024 for r in rows], marker="o", label=stage)
    ax.plot(stores, stores, "k--", label="the store itself")
    ax.axhline(2.0, color="grey", lw=0.8, ls=":", label="2 GB")
    ax.set_xlabel("decoded store (GB)")
    ax.set_ylabel("peak RSS of the stage's process (GB)")
    ax.set_title("Peak memory per stage vs data size (64x64 RGB, 2 CPU cores)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25_000, 100_000, 400_000])
    parser.add_argument("--root", type=Path, default=Path("/tmp/stage_costs"))
    parser.add_argument("--steps", type=int, default=100, help="pretraining steps (of 256 images) per size")
    parser.add_argument("--baseline-commit", default=None)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plot", action="store_true")
    parser.add_argument(
        "--stages", nargs="+", choices=STAGES, default=list(STAGES), help="measure only these (others: --root's stage_costs.json)"
    )
    parser.add_argument("--baseline-only", action="store_true", help="only the in-memory comparison (sizes[0]'s workspace must exist)")
    args = parser.parse_args()

    _, _, imports = timed([sys.executable, "-c", IMPORTS], ROOT)
    print(f"imports alone: {imports:,.0f} MB peak RSS\n")
    print("| images | store MB | stage | seconds | peak RSS MB | notes |")
    print("|---:|---:|---|---:|---:|---|")
    saved = args.root / "stage_costs.json"
    rows = {r["images"]: r for r in (json.loads(saved.read_text()) if saved.exists() else [])}
    for n in [] if args.baseline_only else args.sizes:
        folder = make_folder(args.root / f"images_{n}", n, 2)
        ws = workspace(args.root, n, folder, args.steps)
        row = rows.setdefault(n, {"images": n})
        if "ingest" not in args.stages and not (ws / "data" / "store.npy").exists():
            raise SystemExit(f"{ws}: no store yet; measure ingest first (--stages ingest ...)")
        for stage in args.stages:
            out, seconds, rss = timed([sys.executable, "-m", "flows.cli", "stage", stage, "--force"], ws)
            result = json.loads(out[out.index("{") :])
            note = ""
            if stage == "pretrain":
                note = f"{result['images_per_s']:,.0f} images/s, {result.get('steps', '')}".rstrip(", ")
            if stage == "ingest":
                note = f"{n / seconds:,.0f} images/s"
            row["store_mb"] = (ws / "data" / "store.npy").stat().st_size / 2**20
            row[stage] = {"seconds": seconds, "rss_mb": rss, "result": result}
            print(f"| {n:,} | {row['store_mb']:,.0f} | {stage} | {seconds:,.1f} | {rss:,.0f} | {note} |", flush=True)
        saved.write_text(json.dumps(sorted(rows.values(), key=lambda r: r["images"]), indent=1, default=str))
    if args.baseline_commit:
        print("\n| round | pretraining path | images/s | loss | peak RSS MB |\n|---:|---|---:|---:|---:|")
        baseline_rows(args.root / f"ws_{args.sizes[0]}", args.baseline_commit, args.rounds)
    if args.plot and rows:
        complete = [r for r in sorted(rows.values(), key=lambda r: r["images"]) if all(st in r for st in STAGES)]
        plot(complete, ROOT / "docs" / "stage_costs.png")


if __name__ == "__main__":
    main()
