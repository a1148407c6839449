"""A child's data under its parent's preprocessing (tasks/data/inherit.py): what fits is taken as the parent
fitted it, what does not is refused with every column named; the leak check counts exactly the shared rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.data import inherit
from tasks.errors import InputError

NAMES = st.lists(st.text("abcdefgh", min_size=1, max_size=4), min_size=1, max_size=6, unique=True)


def transform(numeric, categorical=(), classes=(0, 1), **extra) -> dict:
    return {"numeric": [{"name": n, "center": 1.5, "scale": 2.0} for n in numeric],
            "categorical": [{"name": c, "categories": ["x"], "encoding": "onehot"} for c in categorical],
            "label_column": "label", "classes": list(classes), "task": "classification", "text_column": None,
            "image_shape": None, "data_version": "parent"} | extra


@settings(derandomize=True, deadline=None)  # a first call imports pyarrow's compute kernels
@given(NAMES, st.data())
def test_a_child_missing_or_adding_a_column_is_refused_naming_each(names, data):
    dropped = data.draw(st.lists(st.sampled_from(names), unique=True, max_size=len(names)))
    added = data.draw(st.lists(st.text("xyz", min_size=5, max_size=6), unique=True, max_size=2))
    child = transform([n for n in names if n not in dropped] + added, data_version="child")
    if not dropped and not added:
        t = inherit.adopt(transform(names), child, "keep", "raw.parquet")
        assert t["numeric"] == transform(names)["numeric"] and t["data_version"] == "child"
        return
    with pytest.raises(InputError) as e:
        inherit.adopt(transform(names), child, "keep", "raw.parquet")
    assert str(e.value).startswith("raw.parquet: the data does not fit the parent's preprocessing")
    for c in dropped + added:
        assert repr(c) in str(e.value)


def test_a_kept_head_takes_the_parents_classes_and_refuses_new_ones_a_reset_one_the_childs():
    parent, child = transform(["a"], classes=[0, 1, 2]), transform(["a"], classes=[2, 0], data_version="child")
    assert inherit.adopt(parent, child, "keep", "r")["classes"] == [0, 1, 2]  # the kept output layer's order
    assert inherit.adopt(parent, child, "reset", "r")["classes"] == [2, 0]
    with pytest.raises(InputError, match=r"label\(s\) \[7\] of column 'label' are not among the parent's"):
        inherit.adopt(parent, transform(["a"], classes=[0, 7]), "keep", "r")
    with pytest.raises(InputError, match="column 'a' is categorical here, numeric for the parent"):
        inherit.adopt(parent, transform([], ["a"]), "reset", "r")


@settings(derandomize=True, deadline=None)
@given(st.sets(st.integers(0, 2**64 - 1), max_size=40), st.sets(st.integers(0, 2**64 - 1), max_size=40),
       st.integers(0, 2))
def test_the_leak_count_is_the_childs_test_rows_among_the_parents_training_rows(trained, other, split_of_other):
    parent_rows = sorted(trained | other)
    split = np.array([0 if h in trained else split_of_other or 1 for h in parent_rows], np.int8)
    rows = pa.table([pa.array(np.array(parent_rows, np.uint64)), pa.array(split),
                     pa.array(np.zeros(len(split), np.int16))], schema=inherit.ROWS_SCHEMA)
    child = np.array(parent_rows + [12345], np.uint64)
    child_split = np.full(len(child), 2, np.int8)
    expected = sum(1 for h in child.tolist() if h in trained)
    assert inherit.leaks(rows, child, child_split) == expected
    assert inherit.leaks(rows, child, np.zeros(len(child), np.int8)) == 0  # only test rows count


def test_rows_round_trip_and_a_wrong_file_is_refused(tmp_path):
    inherit.write_rows(tmp_path / "rows.parquet", np.array([3, 1], np.uint64), np.array([0, 2]))
    assert inherit.read_rows(tmp_path / "rows.parquet")["row"].to_pylist() == [3, 1]
    (tmp_path / "bad.parquet").write_text("no")
    with pytest.raises(InputError, match="bad.parquet: the parent's row hashes cannot be read"):
        inherit.read_rows(tmp_path / "bad.parquet")


def test_parent_json_must_name_the_parent_the_params_do(tmp_path):
    assert inherit.fetched(tmp_path, None) == {"from": None}  # none fetched yet: from scratch
    (tmp_path / "parent.json").write_text('{"from": "digits@prod", "artifact": "digits", "commit": "ab12", '
                                          '"weights": {"sha256": "cd34"}}')
    with pytest.raises(InputError, match="holds the parent 'digits@prod', but train.init.from is 'digits@v0.0.1'"):
        inherit.fetched(tmp_path, "digits@v0.0.1")
    (tmp_path / "parent.json").write_text('{"from": "digits@prod", "artifact": "digits", "commit": "ab12"}')
    with pytest.raises(InputError, match="the parent 'digits@prod' has no weights sha256; run `dvc repro parent`"):
        inherit.fetched(tmp_path, "digits@prod")  # a hand-edited record is refused, not a KeyError in train


def test_a_parents_old_rows_file_reads_as_one_experience(tmp_path):
    old = pa.table([pa.array(np.array([5, 7], np.uint64)), pa.array(np.array([0, 2], np.int8))],
                   schema=inherit.LEGACY_ROWS_SCHEMA)
    pq.write_table(old, tmp_path / "rows.parquet")
    rows = inherit.read_rows(tmp_path / "rows.parquet")
    assert rows["experience"].to_pylist() == [0, 0]
    assert inherit.experiences_of(rows, tmp_path) == [{"experience": 0, "data_version": None}]


@settings(max_examples=60, deadline=None)
@given(parent=st.lists(st.integers(1, 2**63), unique=True, max_size=30),
       new=st.lists(st.integers(1, 2**63), unique=True, max_size=30), earlier=st.integers(0, 3))
def test_experiences_follow_the_parent_and_new_rows_make_the_next_one(tmp_path_factory, parent, new, earlier):
    """A row the parent had keeps its experience; the rows it had not are one new experience, numbered next;
    written and read back through rows.parquet, as the next child reads it."""
    new = [h for h in new if h not in set(parent)]
    listed = [{"experience": e, "data_version": f"v{e}"} for e in range(earlier + 1)]
    parent_exp = np.array([i % (earlier + 1) for i in range(len(parent))], np.int16)
    folder = tmp_path_factory.mktemp("rows")
    inherit.write_rows(folder / "p.parquet", np.array(parent, np.uint64), np.zeros(len(parent), np.int8),
                       parent_exp, listed)
    rows = inherit.read_rows(folder / "p.parquet")
    child = np.array(new + parent[::-1], np.uint64)
    exp, out = inherit.assign_experiences(rows, inherit.experiences_of(rows, folder), child, "vnew")
    assert exp[len(new):].tolist() == parent_exp[::-1].tolist()
    assert set(exp[:len(new)].tolist()) <= {earlier + 1}
    assert out == listed + ([{"experience": earlier + 1, "data_version": "vnew"}] if new else [])
    scratch, first = inherit.assign_experiences(None, [], child, "v0")
    assert not scratch.any() and first == [{"experience": 0, "data_version": "v0"}]
