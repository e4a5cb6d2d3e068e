"""validate on real ingested folders: GX suite, quarantine, reports, and when the stage fails."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from imagefactory import image_folder, write_corrupt_png, write_empty, write_png, write_text_as_image

from ssl_components.config import IngestConfig, ValidateConfig
from ssl_components.data.dataset import quarantined_ids, read_manifest
from ssl_components.data.ingest import ingest
from ssl_components.errors import DataError
from ssl_components.io import read_json, write_parquet
from ssl_components.validation import validate


def ingested(tmp_path, prepare=None):
    """Ingest a train/test folder of 2 classes x 5 images (after `prepare(root)` adds files) into tmp_path/data."""
    root = image_folder(tmp_path / "imgs", per_class=5, splits=["train", "test"], size=16)
    if prepare:
        prepare(root)
    ingest(IngestConfig(source="folder", path=root, image_size=16, channels=1), tmp_path / "data")
    return tmp_path / "data"


def row_id(data_dir, suffix):
    m = read_manifest(data_dir)
    return m.loc[m["path"].str.endswith(suffix), "id"].item()


def quarantine(data_dir):
    return pd.read_csv(data_dir / "quarantine.csv", dtype={"id": str}).set_index("id")["reason"].to_dict()


def rejected(reports_dir):
    """reports/quarantine.csv: every quarantined row, written whether validation passed or not."""
    return pd.read_csv(reports_dir / "quarantine.csv", dtype={"id": str}).set_index("id")["reason"].to_dict()


def add_broken(root):
    write_corrupt_png(root / "train" / "cat" / "corrupt.png")
    write_empty(root / "train" / "dog" / "zero.png")
    write_text_as_image(root / "test" / "cat" / "text.png")


def test_clean_dataset_passes_with_empty_quarantine_and_reports(tmp_path):
    # an all-black image that decodes is a valid image, not a decode failure
    data = ingested(tmp_path, lambda root: write_png(root / "train" / "cat" / "black.png", array=np.zeros((16, 16), np.uint8)))
    result = validate(ValidateConfig(min_rows=10), data, tmp_path / "reports")

    assert result["passed"] and result["rows"] == 21 and result["quarantined"] == 0 and result["reasons"] == {}
    assert (data / "quarantine.csv").read_text().strip() == "id,path,reason"
    assert quarantined_ids(data) == set()
    report = read_json(tmp_path / "reports" / "validation.json")
    assert report["passed"] is True and report["bad_fraction"] == 0.0
    assert report["checks"]["columns match schema"]["by"] == "great_expectations"
    assert all(c["success"] for c in report["checks"].values())
    md = (tmp_path / "reports" / "validation.md").read_text()
    assert "PASSED" in md and "| decodes | great_expectations | pass | 0 |" in md


def test_broken_files_are_quarantined_with_their_reasons(tmp_path):
    data = ingested(tmp_path, add_broken)
    result = validate(ValidateConfig(min_rows=10, max_bad_fraction=0.5), data, tmp_path / "reports")

    assert result["passed"] and result["quarantined"] == 3
    assert result["reasons"] == {"corrupt image": 1, "empty file": 1, "not an image PIL can read": 1}
    q = quarantine(data)
    assert q[row_id(data, "corrupt.png")].startswith("corrupt image (")
    assert q[row_id(data, "zero.png")] == "empty file (0 bytes)"
    assert q[row_id(data, "text.png")] == "not an image PIL can read"
    assert quarantined_ids(data) == set(q)
    md = (tmp_path / "reports" / "validation.md").read_text()
    assert "| decodes | great_expectations | FAIL | 3 |" in md and "- empty file: 1" in md


def test_too_many_bad_images_fail_the_stage_after_writing_the_reports(tmp_path):
    data = ingested(tmp_path, add_broken)
    with pytest.raises(DataError) as err:
        validate(ValidateConfig(min_rows=10, max_bad_fraction=0.0), data, tmp_path / "reports")

    first = str(err.value).splitlines()[0]
    assert first.startswith("validation failed: 3 of 23 images (13%) are bad, tolerance 0% (validate.max_bad_fraction)")
    assert "validate.max_bad_fraction" in first and "validation.md" in first and "quarantine.csv" in first
    assert read_json(tmp_path / "reports" / "validation.json")["passed"] is False
    assert (tmp_path / "reports" / "validation.md").is_file()
    assert len(rejected(tmp_path / "reports")) == 3  # the list for the user to fix
    assert not (data / "quarantine.csv").exists()  # nothing downstream can train on data that failed


def test_a_failed_validation_removes_the_quarantine_of_an_earlier_pass(tmp_path):
    data = ingested(tmp_path, add_broken)
    validate(ValidateConfig(min_rows=10, max_bad_fraction=0.5), data, tmp_path / "reports")
    assert (data / "quarantine.csv").is_file()
    with pytest.raises(DataError):
        validate(ValidateConfig(min_rows=10, max_bad_fraction=0.0), data, tmp_path / "reports")
    assert not (data / "quarantine.csv").exists()
    with pytest.raises(DataError, match="has not passed validation"):
        quarantined_ids(data)


def test_duplicates_and_train_test_leakage_are_quarantined(tmp_path):
    def copies(root):
        shutil.copy(root / "train" / "cat" / "000.png", root / "train" / "cat" / "dup.png")  # within train
        shutil.copy(root / "train" / "dog" / "001.png", root / "test" / "dog" / "leak.png")  # train -> test
        shutil.copy(root / "test" / "cat" / "002.png", root / "test" / "cat" / "twin.png")  # within test

    data = ingested(tmp_path, copies)
    result = validate(ValidateConfig(min_rows=10, max_bad_fraction=0.2), data, tmp_path / "reports")

    assert result["reasons"] == {"duplicate": 2, "leakage": 1}
    q = quarantine(data)
    assert q == {
        row_id(data, "train/cat/dup.png"): f"duplicate of {row_id(data, 'train/cat/000.png')}",
        row_id(data, "test/cat/twin.png"): f"duplicate of {row_id(data, 'test/cat/002.png')}",
        row_id(data, "test/dog/leak.png"): f"leakage: same image as train row {row_id(data, 'train/dog/001.png')}",
    }
    checks = read_json(tmp_path / "reports" / "validation.json")["checks"]
    assert not checks["sha256 unique"]["success"]  # GX sees every copy; the quarantine keeps the first
    assert checks["no leakage into val/test"]["unexpected_count"] == 1


def test_one_image_under_two_labels_is_quarantined_everywhere(tmp_path):
    data = ingested(tmp_path, lambda root: shutil.copy(root / "train" / "cat" / "003.png", root / "train" / "dog" / "cat_again.png"))
    result = validate(ValidateConfig(min_rows=10, max_bad_fraction=0.2), data, tmp_path / "reports")
    q = quarantine(data)
    reason = "conflicting labels: the same image is labelled 'cat' and 'dog'"
    assert q == {row_id(data, "train/cat/003.png"): reason, row_id(data, "train/dog/cat_again.png"): reason}
    assert result["reasons"] == {"conflicting labels": 2}


def test_val_images_are_checked_for_leakage_like_test_images(tmp_path):
    def with_val(root):
        image_folder(root, per_class=2, splits=["val"], size=16, seed=5000)
        shutil.copy(root / "train" / "cat" / "000.png", root / "val" / "cat" / "seen.png")

    data = ingested(tmp_path, with_val)
    validate(ValidateConfig(min_rows=10, max_bad_fraction=0.2), data, tmp_path / "reports")
    assert quarantine(data) == {row_id(data, "val/cat/seen.png"): f"leakage: same image as train row {row_id(data, 'train/cat/000.png')}"}
    assert set(read_manifest(data)["split"]) == {"train", "val", "test"}


def test_label_checks(tmp_path):
    # labels outside expected_labels: quarantined as such; a class only in test: quarantined as such
    data = ingested(tmp_path, lambda root: write_png(root / "test" / "emu" / "0.png", seed=777, size=16))
    result = validate(ValidateConfig(min_rows=10, expected_labels=[0, 1], max_bad_fraction=0.1), data, tmp_path / "reports")

    assert result["passed"] and result["reasons"] == {"label expected": 1}
    assert quarantine(data) == {row_id(data, "emu/0.png"): "label 2 not in validate.expected_labels"}
    data2 = ingested(tmp_path / "second", lambda root: write_png(root / "test" / "emu" / "0.png", seed=777, size=16))
    result = validate(ValidateConfig(min_rows=10, max_bad_fraction=0.1), data2, tmp_path / "reports2")
    report = read_json(tmp_path / "reports2" / "validation.json")
    assert result["reasons"] == {"class not in train": 1} and not report["checks"]["val/test classes seen in train"]["success"]
    assert quarantine(data2) == {row_id(data2, "emu/0.png"): "class 'emu' has no train images"}
    with pytest.raises(DataError, match="1 of 21 images"):  # under the default tolerance it fails the stage
        validate(ValidateConfig(min_rows=10), data2, tmp_path / "reports3")


def test_row_count_out_of_bounds_fails_the_stage(tmp_path):
    data = ingested(tmp_path)
    with pytest.raises(DataError, match=r"^validation failed: 20 rows, outside validate.min_rows..max_rows \(100..") as err:
        validate(ValidateConfig(min_rows=100), data, tmp_path / "reports")
    assert "validation.md" in str(err.value).splitlines()[0]
    assert read_json(tmp_path / "reports" / "validation.json")["checks"]["row count in bounds"]["success"] is False


def test_schema_mismatch_fails_the_stage(tmp_path):
    data = ingested(tmp_path)
    write_parquet(data / "manifest.parquet", read_manifest(data).drop(columns=["mode"]))
    with pytest.raises(DataError, match="manifest columns .* differ from"):
        validate(ValidateConfig(min_rows=10), data, tmp_path / "reports")
    assert (tmp_path / "reports" / "quarantine.csv").is_file() and (tmp_path / "reports" / "validation.md").is_file()
    assert not (data / "quarantine.csv").exists()
