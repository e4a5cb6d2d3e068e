"""Data sources, the decoded uint8 store and the validated dataset."""

from ssl_components.data.dataset import Dataset, load_dataset
from ssl_components.data.ingest import MANIFEST_COLUMNS, ingest

__all__ = ["Dataset", "load_dataset", "ingest", "MANIFEST_COLUMNS"]
