"""clean: duplicates, unlabeled rows, gaps, stratified split, train-only scaling."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.clean import apply_transform, assign_splits, clean
from tasks.errors import InputError
from tasks.ingest import ingest
from tasks.params import Clean, Ingest, Split
from tasks.tables import read_model_table


def test_report_counts_what_was_done(staged):
    report = json.loads(staged["report"].read_text())
    assert report["rows_in"] == 64
    assert report["duplicates_dropped"] == 2
    assert report["unlabeled_dropped"] == 1
    assert report["missing_values_filled"] == 1
    assert report["rows_out"] == 61 == sum(report["split_rows"].values())


def test_output_matches_the_declared_schema(staged):
    table = read_model_table(staged["clean"])
    assert table.column("label").to_pylist().count(None) == 0
    assert set(table.column("split").to_pylist()) == {"train", "val", "test"}


def test_statistics_are_fitted_on_training_rows_only(staged):
    t = json.loads(staged["transform"].read_text())
    table = read_model_table(staged["clean"])
    x = np.column_stack([table[c].to_numpy() for c in t["features"]])
    train = np.array(table["split"].to_pylist()) == "train"
    # scaled training features have mean 0 and std 1 (one scale for all pixels) ...
    assert abs(x[train].mean()) < 1e-5 and abs(x[train].std() - 1) < 1e-4
    # ... while the held-out rows, not used for fitting, do not
    assert abs(x[~train].mean()) > 1e-4


def test_transform_reproduces_the_cleaned_features(staged):
    t = json.loads(staged["transform"].read_text())
    raw = pq.read_table(staged["raw"])
    first = np.array([[raw[c][0].as_py() for c in t["features"]]], dtype=np.float64)
    table = read_model_table(staged["clean"])
    np.testing.assert_allclose(apply_transform(first, t)[0], [table[c][0].as_py() for c in t["features"]], rtol=1e-6)


def test_split_is_stratified_and_seeded():
    y = np.repeat(np.arange(4), 50)
    a = assign_splits(y, Split(val_fraction=0.2, test_fraction=0.2, seed=3))
    b = assign_splits(y, Split(val_fraction=0.2, test_fraction=0.2, seed=3))
    assert (a == b).all()
    for label in range(4):
        counts = {s: int(((a == s) & (y == label)).sum()) for s in ("train", "val", "test")}
        assert counts == {"train": 30, "val": 10, "test": 10}


def test_too_few_rows_per_class_to_split(tmp_path):
    (tmp_path / "s.csv").write_text("a,label\n1,0\n2,0\n3,0\n4,0\n5,1\n")
    ingest(Ingest(source=str(tmp_path / "s.csv")), tmp_path / "r.parquet", tmp_path / "m.json")
    with pytest.raises(InputError, match="cannot split stratified by label"):
        clean(Clean(), tmp_path / "r.parquet", tmp_path / "m.json", tmp_path / "c.parquet",
              tmp_path / "t.json", tmp_path / "rep.json")
    assert not (tmp_path / "c.parquet").exists()


def test_string_labels_become_class_indices(tmp_path):
    lines = ["a,b,label"] + [f"{i},{i % 7},{'cat' if i % 2 else 'dog'}" for i in range(40)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    ingest(Ingest(source=str(tmp_path / "s.csv")), tmp_path / "r.parquet", tmp_path / "m.json")
    clean(Clean(), tmp_path / "r.parquet", tmp_path / "m.json", tmp_path / "c.parquet",
          tmp_path / "t.json", tmp_path / "rep.json")
    assert json.loads((tmp_path / "t.json").read_text())["classes"] == ["cat", "dog"]
    assert set(read_model_table(tmp_path / "c.parquet")["label"].to_pylist()) == {0, 1}
