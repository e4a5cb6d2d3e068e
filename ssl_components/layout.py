"""Where the pipeline's files live, by name: every module that reads or writes one uses these.

Relative to `paths.data`: the manifest, the decoded store, the class list, the quarantine list and the view cache.
Relative to `paths.models`: the encoder, its training history and the resumable checkpoint.
Relative to `paths.reports`: metrics, validation and registry reports, plots.
"""

MANIFEST = "manifest.parquet"
STORE = "store.npy"
CLASSES = "classes.json"
QUARANTINE = "quarantine.csv"
VIEWS = "cache/views"

ENCODER = "encoder.pt"
HISTORY = "history.json"
CHECKPOINT = "checkpoints/last.pt"

METRICS = "metrics.json"
VALIDATION_MD = "validation.md"
VALIDATION_JSON = "validation.json"
REJECTED = "quarantine.csv"  # reports/quarantine.csv: every quarantined row, written whether validation passes or not
REGISTRY = "registry.json"
PLOTS = "plots"
