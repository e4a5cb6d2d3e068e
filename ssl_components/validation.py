"""validate: a Great Expectations suite on the manifest, cross-row checks, a quarantine list and a report.

Per-row problems (an image that does not decode or was refused, a duplicate, one image under two labels, a
val/test image that is also in train, a val/test image of a class with no train images, a mode or size out of
bounds) quarantine that row; downstream stages leave those rows out. Table-level problems (wrong columns, row
count out of bounds, missing or repeated ids, a store that does not match the manifest) cannot be pinned on
rows: they fail the stage, as does a quarantined share above `validate.max_bad_fraction`.

`reports/quarantine.csv` (every quarantined row and why) and `reports/validation.{md,json}` are written every
time; `data/quarantine.csv`, which downstream stages read, only when the data passes (and it is removed when it
does not), so nothing can train on data that failed validation.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ssl_components.config import ValidateConfig
from ssl_components.data.dataset import read_manifest
from ssl_components.data.ingest import MANIFEST_COLUMNS
from ssl_components.data.sources import SPLITS
from ssl_components.errors import DataError
from ssl_components.io import read_json, write_json, write_text
from ssl_components.layout import CLASSES, QUARANTINE, REJECTED, STORE, VALIDATION_JSON, VALIDATION_MD

log = logging.getLogger(__name__)

# Checks whose failure cannot be pinned on single rows: each fails the stage. Name -> message.
TABLE_CHECKS = {
    "columns match schema": "manifest columns {observed} differ from {expected}; re-run ingest",
    "row count in bounds": "{n} rows, outside validate.min_rows..max_rows ({cfg.min_rows}..{cfg.max_rows}); "
    "check the source or change the bounds",
    "id not null": "{count} rows have no id; re-run ingest",
    "id unique": "{count} rows share an id with another row; re-run ingest",
    "store matches manifest": "{store} holds {observed} images for {n} manifest rows; re-run ingest",
}
# Per-row checks: check name -> (column, quarantine reason for a failing value). Listed in priority order:
# a row's first failing check is its reason. Duplicates and leakage come after these (see _cross_row).
ROW_CHECKS = {
    "decodes": ("decode_error", "{v}"),
    "path not null": ("path", "path is missing"),
    "sha256 not null": ("sha256", "sha256 is missing"),
    "split not null": ("split", "split is missing"),
    "split is train/val/test": ("split", "split {v!r} is not train/val/test"),
    "mode allowed": ("mode", "mode {v!r} not in validate.allowed_modes"),
    "width in bounds": ("width", "width {v} outside validate.min_side..max_side"),
    "height in bounds": ("height", "height {v} outside validate.min_side..max_side"),
    "label expected": ("label", "label {v} not in validate.expected_labels"),
}


def run_expectations(cfg: ValidateConfig, df: pd.DataFrame) -> dict[str, dict]:
    """Run the GX 1.x suite on `df` in an ephemeral context. Returns check name -> plain-dict result."""
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    gx_log = logging.getLogger("great_expectations")
    if gx_log.level == logging.NOTSET:  # its INFO messages (hundreds at import) are noise in a stage's log
        gx_log.setLevel(logging.WARNING)
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    checks = {
        "columns match schema": gxe.ExpectTableColumnsToMatchOrderedList(column_list=MANIFEST_COLUMNS),
        "row count in bounds": gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows, max_value=cfg.max_rows),
        "id not null": gxe.ExpectColumnValuesToNotBeNull(column="id"),
        "id unique": gxe.ExpectColumnValuesToBeUnique(column="id"),
        **{f"{c} not null": gxe.ExpectColumnValuesToNotBeNull(column=c) for c in ("path", "sha256", "split")},
        "split is train/val/test": gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        "sha256 unique": gxe.ExpectColumnValuesToBeUnique(column="sha256"),
        "decodes": gxe.ExpectColumnValuesToBeNull(column="decode_error"),
        "mode allowed": gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=list(cfg.allowed_modes)),
        **{
            f"{c} in bounds": gxe.ExpectColumnValuesToBeBetween(column=c, min_value=cfg.min_side, max_value=cfg.max_side)
            for c in ("width", "height")
        },
    }
    if cfg.expected_labels is not None:
        checks["label expected"] = gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(cfg.expected_labels))
    for name, expectation in checks.items():
        expectation.meta = {"check": name}  # results come back in no fixed order: this names them

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = context.data_sources.add_pandas("manifest").add_dataframe_asset("manifest").add_batch_definition_whole_dataframe("all")
    suite = context.suites.add(gx.ExpectationSuite(name="manifest", expectations=list(checks.values())))
    vd = context.validation_definitions.add(gx.ValidationDefinition(name="manifest", data=batch, suite=suite))
    run = vd.run(batch_parameters={"dataframe": df}, result_format={"result_format": "COMPLETE"})

    out = {}
    for r in run.results:
        info = r.exception_info or {}
        infos = [info] if "raised_exception" in info else list(info.values())  # per-metric dicts on metric errors
        errors = [i.get("exception_message") for i in infos if isinstance(i, dict) and i.get("raised_exception")]
        observed = r.result.get("observed_value")
        exp_cfg = r.expectation_config
        assert exp_cfg is not None and exp_cfg.meta is not None  # each result carries its expectation, named above
        out[exp_cfg.meta["check"]] = {
            "expectation": exp_cfg.type,
            "column": exp_cfg.kwargs.get("column"),
            "by": "great_expectations",
            "success": bool(r.success),
            "unexpected_count": int(r.result.get("unexpected_count") or 0),
            "rows": [int(i) for i in r.result.get("unexpected_index_list") or []],
            "observed": observed.item() if isinstance(observed, np.generic) else observed,
            "error": errors[0] if errors else None,
        }
    return {name: out[name] for name in checks}


def _check(success: bool, rows=(), **extra) -> dict:
    rows = [int(i) for i in rows]
    return {"by": "pandas", "success": bool(success), "unexpected_count": len(rows), "rows": rows, **extra}


def _cross_row(df: pd.DataFrame, classes: list[str]) -> tuple[dict[str, dict], dict[int, tuple[str, str]]]:
    """Checks across rows, by image content (sha256) among rows that decoded. Returns (checks, row -> (kind, reason)).

    - one image under two labels: every copy is quarantined (which label is right cannot be known);
    - leakage: a val or test image that is also a train image (or a test image also in val) is quarantined there;
    - duplicates within a split: copies after the first are quarantined.
    """
    name = lambda label: classes[int(label)] if 0 <= int(label) < len(classes) else str(int(label))  # noqa: E731
    ok = df[df["decode_error"].isna() & df["sha256"].notna()]
    reasons: dict[int, tuple[str, str]] = {}
    labelled = ok[ok["label"].notna()]
    label_sets = labelled.groupby("sha256")["label"].agg(lambda v: sorted({int(x) for x in v}))
    conflicting = label_sets[label_sets.map(len) > 1]
    conflict_rows = ok.index[ok["sha256"].isin(conflicting.index)]
    for i in conflict_rows:
        names = " and ".join(repr(name(x)) for x in conflicting[df.at[i, "sha256"]])
        reasons[i] = ("conflicting labels", f"conflicting labels: the same image is labelled {names}")
    leaked_rows = []
    for held_out, before in (("val", ("train",)), ("test", ("train", "val"))):
        earlier = ok[ok["split"].isin(before)].drop_duplicates("sha256").set_index("sha256")
        leaked = ok[(ok["split"] == held_out) & ok["sha256"].isin(earlier.index)]
        for i, sha in leaked["sha256"].items():
            reasons.setdefault(i, ("leakage", f"leakage: same image as {earlier.at[sha, 'split']} row {earlier.at[sha, 'id']}"))
        leaked_rows += list(leaked.index)
    first = ok.drop_duplicates(["split", "sha256"]).set_index(["split", "sha256"])["id"]
    dups = ok[ok.duplicated(["split", "sha256"])]
    for i, split, sha in zip(dups.index, dups["split"], dups["sha256"]):
        reasons.setdefault(i, ("duplicate", f"duplicate of {first[(split, sha)]}"))
    checks = {
        "one label per image": _check(conflicting.empty, conflict_rows, column="label"),
        "no leakage into val/test": _check(not leaked_rows, leaked_rows, column="sha256"),
        "no duplicates within a split": _check(dups.empty, dups.index, column="sha256"),
    }
    return checks, reasons


def _unseen_classes(df: pd.DataFrame, reasons: dict[int, tuple[str, str]], classes: list[str]) -> tuple[dict, dict[int, tuple[str, str]]]:
    """Val/test images of a class with no train image left (evaluation could never get them right): quarantined."""
    kept = df.drop(index=list(reasons))
    train_labels = set(kept.loc[kept["split"] == "train", "label"].dropna().astype(int))
    held_out = kept[kept["split"].isin(["val", "test"]) & kept["label"].notna()]
    rows = held_out.index[~held_out["label"].astype(int).isin(train_labels)]
    found = {}
    for i in rows:
        label = int(df.at[i, "label"])
        cls = classes[label] if 0 <= label < len(classes) else str(label)
        found[i] = ("class not in train", f"class {cls!r} has no train images")
    return _check(not len(rows), rows, column="label"), found


def _classes(data_dir: Path) -> list[str]:
    try:
        return list(read_json(data_dir / CLASSES)["classes"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _pct(x: float) -> str:
    return f"{100 * x:.3g}%"


def validate(cfg: ValidateConfig, data_dir: str | Path, reports_dir: str | Path) -> dict:
    """Run the validate stage: writes `reports_dir/validation.{md,json}` and `reports_dir/quarantine.csv`, and
    `data_dir/quarantine.csv` when the data passes; raises DataError when it does not."""
    data_dir, reports_dir = Path(data_dir), Path(reports_dir)
    df = read_manifest(data_dir).reset_index(drop=True)
    n = len(df)
    checks = run_expectations(cfg, df)
    store = data_dir / STORE
    store_rows = len(np.load(store, mmap_mode="r")) if store.is_file() else 0
    checks["store matches manifest"] = _check(store.is_file() and store_rows == n, observed=store_rows)

    reasons: dict[int, tuple[str, str]] = {}  # row -> (kind, reason); the first reason found wins
    if checks["columns match schema"]["success"]:  # otherwise the per-row checks have nothing sound to read
        for name, (column, template) in ROW_CHECKS.items():
            for i in checks.get(name, {}).get("rows", []):
                value = df.at[i, column]
                kind = str(value).split(" (")[0] if name == "decodes" else name  # 'corrupt image (...)' -> 'corrupt image'
                reasons.setdefault(i, (kind, template.format(v=value).replace("\n", " ")))
        classes = _classes(data_dir)
        cross, cross_reasons = _cross_row(df, classes)
        checks.update(cross)
        for i, reason in cross_reasons.items():
            reasons.setdefault(i, reason)
        checks["val/test classes seen in train"], unseen = _unseen_classes(df, reasons, classes)
        reasons.update(unseen)

    failed_table = []
    for name, template in TABLE_CHECKS.items():
        c = checks[name]
        c["table_level"] = True
        if not c["success"]:
            failed_table.append(
                template.format(
                    observed=c.get("observed"), count=c["unexpected_count"], n=n, cfg=cfg, expected=MANIFEST_COLUMNS, store=STORE
                )
            )
    problems = failed_table

    quarantine = pd.DataFrame(
        [(df.at[i, "id"], df.at[i, "path"], reasons[i][1]) for i in sorted(reasons)], columns=["id", "path", "reason"]
    )
    rejected = write_text(reports_dir / REJECTED, quarantine.to_csv(index=False))
    bad_fraction = len(quarantine) / n if n else 0.0
    counts = dict(Counter(kind for kind, _ in reasons.values()).most_common())
    too_bad = bad_fraction > cfg.max_bad_fraction
    passed = not failed_table and not too_bad
    for c in checks.values():  # a few examples per check for the report: "id: offending value"
        rows, example_column = c.pop("rows")[:5], c.get("column")
        c["examples"] = (
            [f"{df.at[i, 'id']}: {df.at[i, example_column]}" if example_column in df.columns else str(df.at[i, "id"]) for i in rows]
            if "id" in df.columns
            else []
        )
    summary = {
        "passed": passed,
        "rows": n,
        "quarantined": len(quarantine),
        "bad_fraction": bad_fraction,
        "max_bad_fraction": cfg.max_bad_fraction,
        "reasons": counts,
        "problems": problems,
        "checks": checks,
    }
    md_path = write_text(reports_dir / VALIDATION_MD, _markdown(summary))
    write_json(reports_dir / VALIDATION_JSON, summary)
    log.info("validate: %d rows, %d quarantined (%s), passed=%s", n, len(quarantine), _pct(bad_fraction), passed)

    if not passed:  # downstream stages read data/quarantine.csv: it exists only for data that passed
        (data_dir / QUARANTINE).unlink(missing_ok=True)
    else:
        write_text(data_dir / QUARANTINE, quarantine.to_csv(index=False))
    where = f"see {md_path} and {rejected}"
    if failed_table:
        more = f" (and {len(failed_table) - 1} more table-level problem(s))" if len(failed_table) > 1 else ""
        raise DataError(f"validation failed: {failed_table[0]}{more}; {where}\n" + "\n".join(problems[1:]))
    if too_bad:
        raise DataError(
            f"validation failed: {len(quarantine)} of {n} images ({_pct(bad_fraction)}) are bad, tolerance "
            f"{_pct(cfg.max_bad_fraction)} (validate.max_bad_fraction); {where}\n"
            + "\n".join(f"  {kind}: {count}" for kind, count in counts.items())
        )
    return {k: summary[k] for k in ("passed", "rows", "quarantined", "bad_fraction", "reasons")} | {"report": str(md_path)}


def _markdown(s: dict) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = [
        "# Data validation report",
        "",
        f"**{'PASSED' if s['passed'] else 'FAILED'}**: {s['rows']} rows, {s['quarantined']} quarantined "
        f"({_pct(s['bad_fraction'])}), tolerance {_pct(s['max_bad_fraction'])} (validate.max_bad_fraction).",
        "",
        "## Checks",
        "",
        "| check | by | result | unexpected | examples |",
        "|---|---|---|---|---|",
    ]
    for name, c in s["checks"].items():
        result = ("pass" if c["success"] else "FAIL") + (" (table-level)" if c.get("table_level") else "")
        examples = c["examples"] or ([f"observed {c['observed']!r}"] if c.get("observed") is not None and not c["success"] else [])
        if c.get("error"):
            examples = [*examples, f"error: {c['error']}"]
        lines.append(f"| {cell(name)} | {c['by']} | {result} | {c['unexpected_count']} | {cell('; '.join(examples))} |")
    lines += ["", "## Quarantine by reason", ""]
    lines += [f"- {cell(k)}: {v}" for k, v in s["reasons"].items()] or ["- none"]
    lines += ["", "## Problems", ""]
    lines += [f"- {cell(p)}" for p in s["problems"]] or ["- none"]
    return "\n".join(lines) + "\n"
