"""Metric names, defined once: evaluation writes them, and the summary, plots, registry, gate and comparison
table read them from here.

Every accuracy is measured on the test split. The SSL encoder's own metrics are `knn_acc`, `linear_probe_acc`
and `finetune_<tag>_acc` per label fraction (tag `1pct` for 1%); each has baselines measured in the same run
with the same code: `raw_pixel_` and `random_init_` versions of the frozen metrics, and
`supervised_<tag>_acc` (the same fine-tuning from random init) for each fine-tune.
"""

from __future__ import annotations

from collections.abc import Iterable

KNN = "knn_acc"
LINEAR_PROBE = "linear_probe_acc"
FROZEN = (KNN, LINEAR_PROBE)  # measured on frozen features
RAW_PIXELS = "raw_pixel_"
RANDOM_INIT = "random_init_"
_FINETUNE, _SUPERVISED, _ACC = "finetune_", "supervised_", "_acc"
LABELS = {KNN: "kNN", LINEAR_PROBE: "linear probe", RAW_PIXELS: "raw pixels", RANDOM_INIT: "random init"}

# Watched while pretraining (the one exception to "measured on the test split"): weighted kNN of the current
# encoder on a fixed labelled part of the TRAIN split, in the history record of each monitored epoch.
MONITOR_KNN = "monitor_knn_acc"
EPOCH_PREFIX = "pretrain_"  # a history record's keys, as per-epoch run metrics: pretrain_loss, pretrain_monitor_knn_acc


def epoch_metrics(record: dict) -> dict[str, float]:
    """One pretraining history record as per-epoch run metrics (`pretrain_<key>`; the epoch is the step).

    Keys a record does not have are absent (the monitor runs only on some epochs); non-numbers are skipped."""
    return {
        f"{EPOCH_PREFIX}{k}": float(v) for k, v in record.items() if k != "epoch" and isinstance(v, int | float) and not isinstance(v, bool)
    }


def fraction_tag(fraction: float) -> str:
    """0.01 -> '1pct', 0.1 -> '10pct', 0.005 -> '0.5pct'."""
    pct = round(fraction * 100, 6)
    text = str(int(pct)) if pct == int(pct) else f"{pct:g}"
    return f"{text}pct"


def tag_fraction(tag: str) -> float:
    return float(tag.removesuffix("pct")) / 100


def finetune(fraction: float) -> str:
    return f"{_FINETUNE}{fraction_tag(fraction)}{_ACC}"


def supervised(fraction: float) -> str:
    return f"{_SUPERVISED}{fraction_tag(fraction)}{_ACC}"


def is_finetune(name: str) -> bool:
    return name.startswith(_FINETUNE) and name.endswith(_ACC)


def finetune_fractions(names: Iterable[str]) -> list[float]:
    """The label fractions that have a fine-tune metric among `names`, ascending."""
    return sorted({tag_fraction(n.removeprefix(_FINETUNE).removesuffix(_ACC)) for n in names if is_finetune(n)})


def encoder_metric_names(label_fractions: Iterable[float]) -> list[str]:
    """The SSL encoder's own metrics for these settings (what the gate may compare), in display order."""
    return [KNN, LINEAR_PROBE, *(finetune(f) for f in sorted(label_fractions))]


def is_encoder_metric(name: str) -> bool:
    return name in FROZEN or is_finetune(name)


def label(name: str) -> str:
    """A short human name: 'kNN', 'linear probe', 'fine-tune 1%'."""
    if is_finetune(name):
        return f"fine-tune {fraction_tag(tag_fraction(name.removeprefix(_FINETUNE).removesuffix(_ACC))).replace('pct', '%')}"
    return LABELS.get(name, name.removesuffix(_ACC).replace("_", " "))


def comparisons(names: Iterable[str]) -> list[tuple[str, list[tuple[str, str]]]]:
    """(encoder metric, [(baseline label, baseline metric), ...]) for each encoder metric present in `names`."""
    names = set(names)
    rows: list[tuple[str, list[tuple[str, str]]]] = []
    for metric in FROZEN:
        if metric in names:
            rows.append((metric, [(LABELS[p], p + metric) for p in (RAW_PIXELS, RANDOM_INIT) if p + metric in names]))
    for fraction in finetune_fractions(names):
        rows.append((finetune(fraction), [("supervised from scratch", supervised(fraction))] if supervised(fraction) in names else []))
    return rows
