"""The label budget: ingest.labels keeps those classes, ingest.per_class a seeded, content-hashed sample of
each; the snapshot, its version and the contract report describe the kept rows, and record what was applied."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tasks.data.budget import label_budget
from tasks.data.hashing import assign_splits, row_hash
from tasks.errors import InputError
from tasks.params import Ingest, Split, load_params
from tests.conftest import ROOT
from tests.tasks.conftest import paths, run_clean, run_ingest, tiny_csv


def source(path, sizes: dict, start: int = 0):
    """A CSV with an `id` column (so every row is distinct and known) and `sizes[label]` rows of each label."""
    labels = [c for c, n in sizes.items() for _ in range(n)]
    ids = list(range(start, start + len(labels)))
    pacsv.write_csv(pa.table({"id": ids, "x": [i % 7 for i in ids], "label": labels}), path)
    return path


def kept(root) -> dict:
    """{label: {id, ...}} of the snapshot in `root`."""
    t = pq.read_table(paths(root)["raw"])
    out = {}
    for i, c in zip(t["id"].to_pylist(), t["label"].to_pylist()):
        out.setdefault(c, set()).add(i)
    return out


def test_labels_keep_only_those_classes_and_the_record_says_so(tmp_path):
    m = run_ingest(tiny_csv(tmp_path / "s.csv", classes=3), tmp_path, labels=[0, 2])
    t = pq.read_table(paths(tmp_path)["raw"])
    assert set(t["label"].to_pylist()) == {0, 2} and m["rows"] == t.num_rows == 41  # a repeat of a 2 kept too
    assert m["profile"]["labels"] == {"0": 20, "2": 21}
    record = {"labels": [0, 2], "per_class": None, "sample_seed": None, "rows_before": 64, "rows_after": 41}
    assert m["selection"] == record
    assert json.loads(paths(tmp_path)["contract"].read_text())["selection"] == record


def test_without_a_budget_nothing_is_recorded_and_every_row_kept(tmp_path):
    m = run_ingest(tiny_csv(tmp_path / "s.csv"), tmp_path)
    assert "selection" not in m and m["rows"] == 64
    assert "selection" not in json.loads(paths(tmp_path)["contract"].read_text())


def test_labels_are_compared_as_the_column_holds_them(tmp_path):
    """Numbers as numbers (1.0 and "1" name the class 1), names as text (1 names the folder "1")."""
    src = source(tmp_path / "n.csv", {0: 3, 1: 4, 2: 5})
    assert run_ingest(src, tmp_path / "a", labels=[1.0, "2"])["profile"]["labels"] == {"1": 4, "2": 5}
    src = source(tmp_path / "s.csv", {"owl": 3, "1": 2, "cat": 5})
    assert run_ingest(src, tmp_path / "b", labels=[1, "cat"])["profile"]["labels"] == {"1": 2, "cat": 5}


def test_per_class_keeps_exactly_k_of_each_class_or_all_it_has(tmp_path):
    src = source(tmp_path / "s.csv", {0: 30, 1: 5, 2: 12})
    m = run_ingest(src, tmp_path, per_class=10, sample_seed=3)
    assert m["profile"]["labels"] == {"0": 10, "1": 5, "2": 10}
    assert m["selection"] == {"labels": None, "per_class": 10, "sample_seed": 3, "rows_before": 47,
                              "rows_after": 25}


def test_per_class_samples_distinct_labelled_rows(tmp_path):
    """A repeat of a row and a row without a label are never sampled: clean's duplicate drop takes none."""
    (tmp_path / "s.csv").write_text("a,label\n" + "1,0\n" * 5 + "2,0\n3,0\n4,1\n5,1\n6,\n7,\n")
    m = run_ingest(tmp_path / "s.csv", tmp_path, per_class=3)
    t = pq.read_table(paths(tmp_path)["raw"])
    assert sorted(zip(t["a"].to_pylist(), t["label"].to_pylist())) == [(1, 0), (2, 0), (3, 0), (4, 1), (5, 1)]
    assert m["rows"] == 5


def test_the_sample_is_seeded_and_deterministic(tmp_path):
    src = source(tmp_path / "s.csv", {0: 40, 1: 40})
    a = run_ingest(src, tmp_path / "a", per_class=8, sample_seed=1)
    b = run_ingest(src, tmp_path / "b", per_class=8, sample_seed=1)
    c = run_ingest(src, tmp_path / "c", per_class=8, sample_seed=2)
    assert a["version"] == b["version"] and kept(tmp_path / "a") == kept(tmp_path / "b")
    assert c["version"] != a["version"] and kept(tmp_path / "c") != kept(tmp_path / "a")


def test_the_sample_is_by_content_not_position(tmp_path):
    """The same rows in another order: the same rows kept (in the source's order)."""
    src = source(tmp_path / "s.csv", {0: 40, 1: 40})
    t = pacsv.read_csv(src)
    pacsv.write_csv(t.take(np.random.default_rng(0).permutation(t.num_rows)), tmp_path / "shuffled.csv")
    run_ingest(src, tmp_path / "a", per_class=8)
    run_ingest(tmp_path / "shuffled.csv", tmp_path / "b", per_class=8)
    assert kept(tmp_path / "a") == kept(tmp_path / "b")


def test_appending_rows_keeps_the_old_sample_except_where_the_budget_forces_it(tmp_path):
    old = pacsv.read_csv(source(tmp_path / "old.csv", {0: 40, 1: 40, 2: 3}))
    new = pacsv.read_csv(source(tmp_path / "more.csv", {0: 40, 1: 1, 2: 2}, start=1000))
    pacsv.write_csv(pa.concat_tables([old, new]), tmp_path / "appended.csv")
    run_ingest(tmp_path / "old.csv", tmp_path / "a", per_class=6)
    run_ingest(tmp_path / "appended.csv", tmp_path / "b", per_class=6)
    before, after = kept(tmp_path / "a"), kept(tmp_path / "b")
    assert {c: len(ids) for c, ids in after.items()} == {0: 6, 1: 6, 2: 5}
    for c in (0, 1, 2):
        entered = {i for i in after[c] if i >= 1000}
        assert after[c] - entered <= before[c], c  # no old row the sample passed over comes in
        assert len(before[c] - after[c]) == (len(entered) if c != 2 else 0), c  # one out for each one in
    assert 0 < len(before[0] - after[0]) < 6  # 40 new rows of class 0: some of them rank in, not all
    assert before[2] <= after[2]  # 5 rows under a budget of 6: every one kept


def test_raising_per_class_keeps_every_row_a_smaller_one_kept(tmp_path):
    src = source(tmp_path / "s.csv", {0: 40, 1: 40})
    run_ingest(src, tmp_path / "a", per_class=5)
    run_ingest(src, tmp_path / "b", per_class=12)
    small, big = kept(tmp_path / "a"), kept(tmp_path / "b")
    assert all(small[c] <= big[c] for c in (0, 1))


def test_the_sample_is_not_drawn_from_one_split_at_the_splits_seed():
    """The sample's salt is its own: with sample_seed == clean.split.seed every split still gets its share."""
    n = 4000
    table = pa.table({"id": np.arange(n), "label": np.arange(n) % 2})
    rows, _ = label_budget(table, Ingest(source="x", per_class=500, sample_seed=42))
    split = assign_splits(row_hash(table.take(pa.array(rows)), ["id", "label"]), Split(seed=42))
    shares = np.bincount(split, minlength=3) / len(rows)
    assert 0.6 < shares[0] < 0.8 and all(0.08 < s < 0.22 for s in shares[1:]), shares


def test_a_label_the_source_lacks_is_named_with_the_labels_it_has(tmp_path):
    src = tiny_csv(tmp_path / "s.csv", classes=3)
    with pytest.raises(InputError, match=r"ingest\.labels: \[5, 7\] not in the source's label column 'label'; "
                                         r"the labels there are \[0, 1, 2\]"):
        run_ingest(src, tmp_path, labels=[0, 5, 7])
    with pytest.raises(InputError, match=r"ingest\.labels: \['dog'\] are not numbers, and the label column holds "
                                         r"numbers .*the labels there are \[0, 1, 2\]"):
        run_ingest(src, tmp_path, labels=[0, "dog"])
    assert not paths(tmp_path)["raw"].exists() and not paths(tmp_path)["manifest"].exists()


def test_a_budget_on_a_regression_target_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValidationError, match=r"ingest\.per_class selects rows by class, and ingest\.task is "
                                              r"regression"):
        Ingest(source="x", task="regression", per_class=3)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"] |= {"task": "regression", "image_shape": None, "labels": [1]}
    params["train"] |= {"loss": "mse", "model": "mlp", "early_stopping": {"metric": "val_loss", "patience": 2}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match=r"ingest\.labels selects rows by class"):
        load_params(tmp_path / "p.yaml")
    with pytest.raises(ValidationError, match="per_class"):
        Ingest(source="x", per_class=0)


def test_example_rows_are_still_named_by_their_source_line(tmp_path):
    """The contract sees the kept rows; an example names its line in the source, not in the kept table."""
    (tmp_path / "s.csv").write_text("a,label\n1,0\n2,1\n3,0\ninf,1\n")
    with pytest.raises(InputError, match=r"e\.g\. line 5: inf"):
        run_ingest(tmp_path / "s.csv", tmp_path, labels=[1])


def test_another_budget_on_the_same_source_is_compared_for_drift(tmp_path):
    src = source(tmp_path / "s.csv", {0: 30, 1: 30, 2: 30})
    first = run_ingest(src, tmp_path)
    run_ingest(src, tmp_path, labels=[1, 2])  # the same source bytes, other data: not "the same data" again
    drift = json.loads(paths(tmp_path)["contract"].read_text())["drift"]
    assert drift["against"] == first["version"] and drift["label_shift"] == pytest.approx(1 / 3, abs=1e-5)


# --- the property: for any table and budget, every kept class has min(k, available) rows, only allowed labels

LABELS = st.sampled_from([0, 1, 2, 3, 4]) | st.none()
NAMES = st.sampled_from(["cat", "dog", "青", "1", ""]) | st.none()


@st.composite
def tables(draw):
    """A small table whose rows repeat now and then (few feature values), with numeric or text labels."""
    n = draw(st.integers(0, 60))
    numeric = draw(st.booleans())
    labels = draw(st.lists(LABELS if numeric else NAMES, min_size=n, max_size=n))
    a = draw(st.lists(st.integers(0, 6), min_size=n, max_size=n))
    b = draw(st.lists(st.sampled_from([0.5, -0.0, 0.0, None, float("nan")]), min_size=n, max_size=n))
    return pa.table({"a": pa.array(a, pa.int64()), "b": pa.array(b, pa.float64()),
                     "label": pa.array(labels, pa.int64() if numeric else pa.string())})


def distinct_labelled(table: pa.Table) -> dict:
    """{label: {row, ...}} of the distinct rows with a label, as Python sees them (NaN is one value; -0.0 is 0.0)."""
    out = {}
    for row in table.to_pylist():
        if row["label"] is not None:
            b = "nan" if row["b"] is not None and row["b"] != row["b"] else row["b"]
            out.setdefault(row["label"], set()).add((row["a"], b + 0.0 if isinstance(b, float) else b))
    return out


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(table=tables(), k=st.integers(1, 8) | st.none(), subset=st.none() | st.sets(LABELS | NAMES, min_size=1),
       seed=st.integers(0, 2**64 - 1), extra=tables())
def test_every_kept_class_has_min_k_and_available_rows_and_only_allowed_labels_remain(table, k, subset, seed, extra):
    present = set(table["label"].drop_null().to_pylist())
    subset = subset and [v for v in subset if v is not None and v in present] or None
    params = Ingest(source="x", per_class=k, labels=subset, sample_seed=seed)
    rows, record = label_budget(table, params)
    if k is None and subset is None:
        assert rows is None and record is None
        return
    out = table.take(pa.array(rows, pa.int64()))
    assert list(rows) == sorted(rows) and record["rows_after"] == out.num_rows
    allowed = set(subset) if subset else present
    assert set(out["label"].drop_null().to_pylist()) <= allowed
    have, got = distinct_labelled(table), distinct_labelled(out)
    for c in allowed:
        if k is None:
            assert out["label"].to_pylist().count(c) == table["label"].to_pylist().count(c)
        else:
            assert out["label"].to_pylist().count(c) == len(got.get(c, ())) == min(k, len(have[c])), c
    if k is None:
        return
    assert out["label"].null_count == 0
    if extra.schema == table.schema:  # appended rows move an old row out only for one of theirs coming in
        both = pa.concat_tables([table, extra])
        rows2, _ = label_budget(both, params)
        old, new = set(rows), set(rows2)
        assert {i for i in new if i < table.num_rows} <= old  # an old row passed over stays out
        assert len(old - new) <= len({i for i in new if i >= table.num_rows})  # one out for each one in


@settings(derandomize=True, max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(table=tables(), k=st.integers(1, 6), seed=st.integers(0, 2**64 - 1), split_seed=st.integers(0, 2**32),
       val=st.floats(0.05, 0.45), test=st.floats(0.05, 0.45))
def test_a_training_split_budget_keeps_k_training_rows_a_class_and_every_held_out_row(table, k, seed, split_seed,
                                                                                       val, test):
    split = Split(seed=split_seed, val_fraction=val, test_fraction=test)
    rows, record = label_budget(table, Ingest(source="x", per_class=k, sample_seed=seed, per_class_in="train"),
                                split)
    assert record["per_class_in"] == "train"
    out = table.take(pa.array(rows, pa.int64()))
    where = assign_splits(row_hash(table, table.column_names), split)
    after = assign_splits(row_hash(out, out.column_names), split)  # as clean splits the snapshot
    assert (after == where[rows]).all()  # a row's split is its own: the snapshot's agree with the source's
    held_out = set(np.flatnonzero(where != 0))
    assert held_out <= set(rows)  # every validation and test row stays, labelled or not, repeated or not
    trained = table.take(pa.array(np.flatnonzero(where == 0), pa.int64()))
    have, got = distinct_labelled(trained), distinct_labelled(out.filter(pa.array(after == 0)))
    for c in have:
        assert len(got.get(c, ())) == min(k, len(have[c])), c
        assert out.filter(pa.array(after == 0))["label"].to_pylist().count(c) == len(got.get(c, ())), c


def test_a_training_split_budget_through_ingest_and_clean(tmp_path):
    whole, budget = tmp_path / "whole", tmp_path / "budget"
    src = source(tmp_path / "s.csv", {0: 40, 1: 40, 2: 40})
    run_ingest(src, whole)
    run_ingest(src, budget, per_class=3, per_class_in="train")
    run_clean(whole)
    run_clean(budget)

    def counts(root) -> Counter:
        t = pa.ipc.open_file(paths(root)["clean"]).read_all()
        return Counter(zip(t["label"].to_pylist(), t["split"].to_pylist()))

    a, b = counts(whole), counts(budget)
    assert all(b[(c, s)] == a[(c, s)] for c, s in a if s != "train")  # validation and test whole
    assert all(b[(c, "train")] == 3 for c in (0, 1, 2))
    assert label_budget(pa.table({"label": [0, 1]}), Ingest(source="x", per_class_in="train")) == (None, None)


def test_a_training_split_budget_names_an_unknown_key_column():
    with pytest.raises(InputError, match=r"clean\.split\.key_columns: \['idd'\] not in the source"):
        label_budget(pa.table({"id": [1, 2], "label": [0, 1]}), Ingest(source="x", per_class=1, per_class_in="train"),
                     Split(key_columns=("idd",)))
