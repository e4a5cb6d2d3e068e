"""The run summary: each SSL accuracy beside the baselines measured in the same run, and the registry outcome."""

from __future__ import annotations


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def summary_rows(metrics: dict, registry: dict | None = None) -> list[dict]:
    """Rows of (evaluation, SSL encoder, baseline(s)) for a table artifact or the terminal."""
    rows = [
        {
            "evaluation": "kNN (k=200, cosine)",
            "ssl_encoder": _pct(metrics.get("knn_acc")),
            "baselines": f"raw pixels {_pct(metrics.get('raw_pixel_knn_acc'))}, random init {_pct(metrics.get('random_init_knn_acc'))}",
        },
        {
            "evaluation": "linear probe, all labels",
            "ssl_encoder": _pct(metrics.get("linear_probe_acc")),
            "baselines": f"raw pixels {_pct(metrics.get('raw_pixel_linear_probe_acc'))}, "
            f"random init {_pct(metrics.get('random_init_linear_probe_acc'))}",
        },
    ]
    tags = [k.removeprefix("finetune_").removesuffix("_acc") for k in metrics if k.startswith("finetune_")]
    for tag in sorted(tags, key=lambda t: float(t.removesuffix("pct"))):
        key = f"finetune_{tag}_acc"
        rows.append(
            {
                "evaluation": f"fine-tune, {tag.replace('pct', '%')} labels",
                "ssl_encoder": _pct(metrics[key]),
                "baselines": f"supervised from scratch {_pct(metrics.get(f'supervised_{tag}_acc'))}",
            }
        )
    if registry:
        outcome = "promoted to champion" if registry["promoted"] else f"kept as challenger (champion: v{registry['champion_version']})"
        rows.append({"evaluation": "registry", "ssl_encoder": f"{registry['model_name']} v{registry['version']}", "baselines": outcome})
    return rows


def print_summary(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="SSL pipeline summary (test set)")
    for col in ("evaluation", "ssl_encoder", "baselines"):
        table.add_column(col.replace("_", " "))
    for row in rows:
        table.add_row(row["evaluation"], row["ssl_encoder"], row["baselines"])
    Console().print(table)
