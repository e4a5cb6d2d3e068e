"""The run summary: each SSL accuracy beside the baselines measured in the same run, and the registry outcome."""

from __future__ import annotations

from ssl_components import metrics as names


def _pct(v) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def registry_outcome(registry: dict) -> str:
    """One line on what the gate did, from reports/registry.json."""
    if registry.get("identical_to"):
        return f"identical to v{registry['identical_to']}: not registered again"
    if registry.get("champion_score") is None:
        return "promoted to champion (no champion before)" if registry["promoted"] else registry.get("decision", "")
    gain = 100 * (registry["score"] - registry["champion_score"])
    vs = f"{gain:+.2f} points vs champion v{registry['compared_with']} re-scored at {_pct(registry['champion_score'])}"
    if registry["promoted"]:
        return f"promoted to champion ({vs})"
    return f"kept as challenger ({vs}; margin {100 * registry['margin']:.2f})"


def summary_rows(metrics: dict, registry: dict | None = None) -> list[dict]:
    """Rows of (evaluation, SSL encoder, baseline(s)) for a table artifact or the terminal."""
    rows = [
        {
            "evaluation": names.label(metric),
            "ssl_encoder": _pct(metrics.get(metric)),
            "baselines": ", ".join(f"{label} {_pct(metrics.get(b))}" for label, b in baselines),
        }
        for metric, baselines in names.comparisons(metrics)
    ]
    if registry:
        rows.append(
            {
                "evaluation": "registry",
                "ssl_encoder": f"{registry['model_name']} v{registry['version']}",
                "baselines": registry_outcome(registry),
            }
        )
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
