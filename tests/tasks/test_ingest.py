"""ingest: sources become a checked snapshot with a manifest."""

import json

import pyarrow.parquet as pq
import pytest

from tasks.errors import InputError
from tasks.ingest import ingest, resolve_source
from tasks.params import Ingest
from tasks.tables import sha256_file
from tests.tasks.conftest import tiny_csv


def test_default_digits_source_ships_with_scikit_learn(tmp_path):
    params = Ingest(source="pkg:sklearn.datasets/data/digits.csv.gz", header=False, image_shape=(8, 8))
    m = ingest(params, tmp_path / "raw.parquet", tmp_path / "m.json")
    assert m["rows"] == 1797 and len(m["schema"]) == 65
    assert m["sha256"] == sha256_file(tmp_path / "raw.parquet")
    assert json.loads((tmp_path / "m.json").read_text()) == m


def test_csv_and_parquet_sources_give_the_same_snapshot(tmp_path):
    csv = tiny_csv(tmp_path / "src.csv")
    a = ingest(Ingest(source=str(csv)), tmp_path / "a.parquet", tmp_path / "a.json")
    pq.write_table(pq.read_table(tmp_path / "a.parquet"), tmp_path / "src.parquet")
    b = ingest(Ingest(source=str(tmp_path / "src.parquet")), tmp_path / "b.parquet", tmp_path / "b.json")
    assert a["rows"] == b["rows"] == 64
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


def test_snapshot_is_deterministic(tmp_path):
    csv = tiny_csv(tmp_path / "src.csv")
    a = ingest(Ingest(source=str(csv)), tmp_path / "a.parquet", tmp_path / "a.json")
    b = ingest(Ingest(source=str(csv)), tmp_path / "b.parquet", tmp_path / "b.json")
    assert a["sha256"] == b["sha256"]


def test_empty_file_is_refused_and_the_old_snapshot_kept(tmp_path):
    good = ingest(Ingest(source=str(tiny_csv(tmp_path / "src.csv"))), tmp_path / "raw.parquet", tmp_path / "m.json")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match=r"empty\.csv: the file is empty"):
        ingest(Ingest(source=str(tmp_path / "empty.csv")), tmp_path / "raw.parquet", tmp_path / "m.json")
    assert sha256_file(tmp_path / "raw.parquet") == good["sha256"]


def test_header_only_file_is_refused(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,label\n")
    with pytest.raises(InputError, match="no data rows"):
        ingest(Ingest(source=str(tmp_path / "h.csv")), tmp_path / "raw.parquet", tmp_path / "m.json")


def test_missing_label_column_is_named(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
    with pytest.raises(InputError, match=r"s\.csv: label column 'label' not found \(columns: a, b, target\)"):
        ingest(Ingest(source=str(tmp_path / "s.csv")), tmp_path / "raw.parquet", tmp_path / "m.json")
    assert not (tmp_path / "raw.parquet").exists()


def test_non_numeric_features_and_wrong_image_shape_reported_together(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,label\nx,2,0\ny,4,1\n")
    with pytest.raises(InputError) as err:
        ingest(Ingest(source=str(tmp_path / "s.csv"), image_shape=(2, 2)), tmp_path / "r.parquet", tmp_path / "m.json")
    assert "must be numeric, these are not: a" in str(err.value)
    assert "needs 4 feature columns, found 2" in str(err.value)


def test_missing_source_and_package(tmp_path):
    with pytest.raises(InputError, match="cannot open source"):
        ingest(Ingest(source=str(tmp_path / "nope.csv")), tmp_path / "r.parquet", tmp_path / "m.json")
    with pytest.raises(InputError, match="no installed package 'nopkg'"):
        resolve_source("pkg:nopkg/data.csv")


def test_corrupt_parquet_is_refused(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"bad\.parquet: cannot be read as parquet"):
        ingest(Ingest(source=str(tmp_path / "bad.parquet")), tmp_path / "r.parquet", tmp_path / "m.json")


def test_repeated_column_names_are_named(tmp_path):
    (tmp_path / "s.csv").write_text("a,a,label\n1,2,0\n3,4,1\n")
    with pytest.raises(InputError, match="column names appear more than once: a"):
        ingest(Ingest(source=str(tmp_path / "s.csv")), tmp_path / "r.parquet", tmp_path / "m.json")
