"""ingest: sources become a checked, content-addressed snapshot with a manifest."""

import json

import pyarrow.parquet as pq
import pytest

from tasks.data.sources import resolve_local
from tasks.data.tables import sha256_file
from tasks.errors import InputError
from tests.tasks.conftest import paths, run_ingest, tiny_csv


def test_default_digits_source_ships_with_scikit_learn(tmp_path):
    m = run_ingest("pkg:sklearn.datasets/data/digits.csv.gz", tmp_path, header=False, image_shape=(8, 8))
    assert m["rows"] == 1797 and len(m["schema"]) == 65
    assert m["sha256"] == sha256_file(tmp_path / "raw.parquet") and m["version"] == m["sha256"][:16]
    assert json.loads((tmp_path / "manifest.json").read_text()) == m
    assert m["profile"]["labels"]["0"] == 178 and m["profile"]["columns"]["x0"]["max"] == 0.0


def test_csv_and_parquet_sources_give_the_same_snapshot(tmp_path):
    a = run_ingest(tiny_csv(tmp_path / "src.csv"), tmp_path / "a")
    pq.write_table(pq.read_table(tmp_path / "a/raw.parquet"), tmp_path / "src.parquet")
    b = run_ingest(tmp_path / "src.parquet", tmp_path / "b")
    assert a["rows"] == b["rows"] == 64
    assert pq.read_table(tmp_path / "a/raw.parquet").equals(pq.read_table(tmp_path / "b/raw.parquet"))
    assert a["version"] == b["version"]  # the version is the data's, not the file format's


def test_empty_file_is_refused_and_the_old_snapshot_kept(tmp_path):
    good = run_ingest(tiny_csv(tmp_path / "src.csv"), tmp_path)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(InputError, match=r"empty\.csv: the file is empty"):
        run_ingest(tmp_path / "empty.csv", tmp_path)
    assert sha256_file(tmp_path / "raw.parquet") == good["sha256"]


def test_header_only_file_is_refused(tmp_path):
    (tmp_path / "h.csv").write_text("a,b,label\n")
    with pytest.raises(InputError, match="0 data rows, at least 1 required"):
        run_ingest(tmp_path / "h.csv", tmp_path)
    assert not json.loads((tmp_path / "contract.failed.json").read_text())["ok"]
    assert not (tmp_path / "contract.json").exists()  # the DVC output describes good data only


def test_missing_label_column_is_named(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
    with pytest.raises(InputError, match=r"column 'label': label column not found \(columns: a, b, target\)"):
        run_ingest(tmp_path / "s.csv", tmp_path)
    assert not paths(tmp_path)["raw"].exists()


def test_wrong_image_shape_is_reported(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,label\n1,2,0\n3,4,1\n")
    with pytest.raises(InputError, match="needs 4 feature columns, found 2"):
        run_ingest(tmp_path / "s.csv", tmp_path, image_shape=(2, 2))


def test_missing_source_and_package(tmp_path):
    with pytest.raises(InputError, match="ingest.source does not exist"):
        run_ingest(tmp_path / "nope.csv", tmp_path)
    with pytest.raises(InputError, match="no installed package 'nopkg'"):
        resolve_local("pkg:nopkg/data.csv")


def test_repeated_column_names_are_named(tmp_path):
    (tmp_path / "s.csv").write_text("a,a,label\n1,2,0\n3,4,1\n")
    with pytest.raises(InputError, match="column 'a': column name appears more than once"):
        run_ingest(tmp_path / "s.csv", tmp_path)


def test_a_renamed_source_of_the_same_bytes_is_the_same_data_version(tmp_path):
    """The path is for people (the contract report); the snapshot, the manifest and so clean's deps, and the
    data version are the data's alone: a rename reruns nothing downstream."""
    first = tiny_csv(tmp_path / "customers.csv")
    second = tmp_path / "sub" / "renamed_2024.csv"
    second.parent.mkdir()
    second.write_bytes(first.read_bytes())
    a, b = run_ingest(first, tmp_path / "a"), run_ingest(second, tmp_path / "b")
    assert a["version"] == b["version"]
    for k in ("raw", "manifest"):
        assert paths(tmp_path / "a")[k].read_bytes() == paths(tmp_path / "b")[k].read_bytes(), k
    assert str(first) not in paths(tmp_path / "a")["manifest"].read_text()
    assert json.loads(paths(tmp_path / "b")["contract"].read_text())["source"] == str(second)
    manifest = paths(tmp_path / "a")["manifest"].read_bytes()
    run_ingest(second, tmp_path / "a")  # the renamed file over the old snapshot: nothing of the data changes
    assert paths(tmp_path / "a")["manifest"].read_bytes() == manifest
