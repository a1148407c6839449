"""buffer: the replay buffer is a class-balanced reservoir of every training row the lineage has had, built from
the parent's buffer and the new rows alone; byte-identical for the same seed and parent; held-out rows never enter.

    python -m pytest tests/tasks/test_buffer.py      # a few seconds

The in-memory tests build candidate tables by hand (the columns the stage adds to the clean table's: `row`, the
stable row hash, and `experience`); the stage tests run ingest + clean + buffer on two versions of the digits
(tests/tasks/conftest.py: continual_lineage).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.buffer import build_buffer
from tasks.continual import buffer as buf
from tasks.data import inherit
from tasks.data.tables import read_model_table, sha256_file
from tasks.errors import InputError
from tasks.params import Buffer

PROPERTY = settings(deadline=None, derandomize=True, max_examples=150)
SCHEMA = pa.schema([pa.field("x", pa.float32(), nullable=False), pa.field("label", pa.int64(), nullable=False),
                    pa.field("split", pa.string(), nullable=False), pa.field("row", pa.uint64(), nullable=False),
                    pa.field("experience", pa.int16(), nullable=False)])


def candidates(rows, labels, experience) -> pa.Table:
    """Training rows as buf.candidates gives them: `x` is the row hash's low bits, so a row is its values."""
    rows = np.asarray(rows, np.uint64)
    exp = np.broadcast_to(np.asarray(experience, np.int16), rows.shape)
    return pa.Table.from_arrays([pa.array((rows % 1000).astype(np.float32)), pa.array(np.asarray(labels, np.int64)),
                                 pa.array(["train"] * len(rows), pa.string()), pa.array(rows), pa.array(exp)],
                                schema=SCHEMA)


def fair(counts: dict[int, int], size: int) -> dict[int, int]:
    """Water-filling, written apart from buf.shares: the highest level L with sum(min(n, L)) <= size; each group
    keeps min(n, L), and what is left goes one row each to the groups with rows to spare, in group order."""
    level = 0
    while counts and level < max(counts.values()) and sum(min(n, level + 1) for n in counts.values()) <= size:
        level += 1
    out = {g: min(n, level) for g, n in counts.items()}
    left = size - sum(out.values())
    for g in sorted(counts):
        if left and counts[g] > out[g]:
            out[g], left = out[g] + 1, left - 1
    return out


def lowest(rows: list[int], k: int, seed: int) -> set[int]:
    """The k rows of lowest priority: a uniform sample of k of them."""
    p = buf.priority(np.asarray(rows, np.uint64), seed)
    return {int(r) for r in np.asarray(rows, np.uint64)[np.argsort(p)][:k]}


def per_group(table: pa.Table, column: str) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for g, r in zip(table[column].to_pylist(), table["row"].to_pylist()):
        out.setdefault(g, set()).add(r)
    return out


counts_st = st.dictionaries(st.integers(0, 9), st.integers(1, 60), min_size=1, max_size=8)


@PROPERTY
@given(counts=counts_st, size=st.integers(1, 120))
def test_shares_are_water_filling_with_the_remainder_by_group_order(counts, size):
    """Each group keeps min(its rows, the fair level); a group short of rows leaves them to the others; the
    rows the level does not divide go to the first groups with rows to spare, whatever their counts are (so a
    group's share does not move when another group only gains rows)."""
    q = buf.shares(counts, size)
    assert q == fair(counts, size)
    assert sum(q.values()) == min(size, sum(counts.values()))
    short = [g for g in counts if q[g] < counts[g]]  # groups that could have taken more
    assert all(q[g] >= max(q.values()) - 1 for g in short)


# one data version's new rows: (label, a skew to make some classes rare), a few rows to several dozen
version_st = st.lists(st.integers(0, 4), max_size=40).map(lambda xs: [x if x < 3 else x % 2 for x in xs])


@PROPERTY
@given(versions=st.lists(version_st, min_size=1, max_size=5), size=st.integers(1, 30),
       seed=st.integers(0, 2**64 - 1), balance=st.sampled_from(["class", "experience"]), data=st.data())
def test_the_buffer_built_version_by_version_is_the_one_built_from_every_row(versions, size, seed, balance, data):
    """The reservoir property: from the last buffer and the new rows alone, the buffer after each version is
    the buffer of every row seen so far built in one go, i.e. per group its share's lowest priorities of
    everything that group has had. It holds because a group's share never grows while it lacks rows: the
    level only falls as rows come, and the remainder follows group order, not the counts."""
    n = sum(map(len, versions))
    hashes = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=n, max_size=n, unique=True))
    it = iter(hashes)
    seen, buffer = [], None
    for e, labels in enumerate(versions):
        new = candidates([next(it) for _ in labels], labels, e)
        seen.append(new)
        buffer = buf.build(buffer, new, size, balance, seed)
        everything = pa.concat_tables(seen)
        assert buffer.equals(buf.build(None, everything, size, balance, seed))
        column = "label" if balance == "class" else "experience"
        groups = per_group(everything, column)
        quota = fair({g: len(r) for g, r in groups.items()}, size)
        assert per_group(buffer, column) == {g: lowest(sorted(r), quota[g], seed) for g, r in groups.items()
                                             if quota[g]}


@PROPERTY
@given(labels=st.lists(st.integers(0, 5), min_size=1, max_size=80), size=st.integers(1, 50),
       seed=st.integers(0, 2**32), data=st.data())
def test_each_class_keeps_its_fair_share_and_the_total_is_the_size_or_every_row(labels, size, seed, data):
    rows = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(labels), max_size=len(labels), unique=True))
    table = buf.build(None, candidates(rows, labels, 0), size, "class", seed)
    counts = {c: labels.count(c) for c in set(labels)}
    kept = {c: n for c, n in zip(*np.unique(table["label"].to_numpy(), return_counts=True))}
    assert table.num_rows == min(size, len(labels))
    assert {c: kept.get(c, 0) for c in counts} == fair(counts, size)
    assert all(kept.get(c, 0) == counts[c] for c in counts if counts[c] <= size // len(counts))  # rare: all
    g, p = table["label"].to_numpy(), buf.priority(table["row"].to_numpy(), seed)  # sorted by (class, priority)
    assert np.all(np.lexsort((p, g)) == np.arange(len(g)))


@PROPERTY
@given(labels=st.lists(st.integers(0, 3), min_size=1, max_size=50), cut=st.integers(0, 50), size=st.integers(1, 30),
       data=st.data())
def test_the_order_of_the_rows_and_of_the_parents_rows_changes_nothing(labels, cut, size, data):
    rows = data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(labels), max_size=len(labels), unique=True))
    old = candidates(rows[:cut], labels[:cut], 0)
    new = candidates(rows[cut:], labels[cut:], 1)
    parent = buf.build(None, old, size, "class", 3)
    shuffled = [t.take(pa.array(data.draw(st.permutations(range(t.num_rows))), pa.int64())) for t in (parent, new)]
    assert buf.build(*shuffled, size, "class", 3).equals(buf.build(parent, new, size, "class", 3))


def test_balance_by_experience_shares_the_size_between_data_versions_whatever_the_classes():
    first = candidates(np.arange(1, 61), [0] * 60, 0)  # one class, 60 rows
    second = candidates(np.arange(101, 111), [1] * 5 + [2] * 5, 1)  # two more classes, 10 rows
    table = buf.build(buf.build(None, first, 30, "experience", 0), second, 30, "experience", 0)
    exp = table["experience"].to_pylist()
    assert (exp.count(0), exp.count(1)) == (20, 10)  # the second version lacks rows: they go to the first
    assert set(per_group(table, "experience")[1]) == set(range(101, 111))
    by_class = buf.build(buf.build(None, first, 30, "class", 0), second, 30, "class", 0)["label"].to_pylist()
    assert [by_class.count(c) for c in (0, 1, 2)] == [20, 5, 5]  # by class, the same rows share differently


def rows_file(hashes, split) -> pa.Table:
    return pa.table({"row": pa.array(np.asarray(hashes, np.uint64)), "split": pa.array(np.asarray(split, np.int8))})


def test_a_parents_row_this_split_holds_out_is_dropped_and_counted(tmp_path):
    parent = candidates([11, 12, 13, 14], [0, 1, 0, 1], 0)
    here = rows_file([11, 12, 13, 99], [0, 1, 2, 0])  # 12 is val here, 13 test; 14 not in this data
    kept, dropped, why = buf.carried(parent, SCHEMA, here, tmp_path / "buffer.parquet")
    assert (dropped, why) == (2, "")
    assert kept["row"].to_pylist() == [11, 14]  # a row the source has since dropped was still trained on


def test_a_parents_buffer_of_other_columns_is_not_carried_and_says_why(tmp_path):
    parent = candidates([11, 12], [0, 1], 0).append_column("extra", pa.array([1.0, 2.0], pa.float32()))
    kept, dropped, why = buf.carried(parent, SCHEMA, rows_file([11, 12], [0, 0]), tmp_path / "buffer.parquet")
    assert kept is None and dropped == 0
    assert str(tmp_path / "buffer.parquet") in why and "columns differ" in why and "preprocessing" in why


def test_an_unreadable_buffer_is_named(tmp_path):
    (tmp_path / buf.TABLE).write_bytes(b"not parquet")
    with pytest.raises(InputError, match="the replay buffer cannot be read"):
        buf.read(tmp_path)
    assert buf.read(tmp_path / "none") is None


# --- the stage on real files: the digits, v0 labels 0-1, v1 labels 0-3 with v0 as its parent --------------


def training(version: dict) -> pa.Table:
    """Every training row of a version, as the buffer sees it (each with its experience)."""
    clean, rows = read_model_table(version["clean"]), inherit.read_rows(version["rows"])
    table = clean.append_column("row", rows["row"]).append_column("experience", rows["experience"])
    return table.filter(pc.equal(table["split"], "train"))


def test_old_rows_keep_their_experience_and_new_rows_are_the_next_one(continual_lineage):
    v0, v1 = continual_lineage["v0"], continual_lineage["v1"]
    r0, r1 = inherit.read_rows(v0["rows"]), inherit.read_rows(v1["rows"])
    old = np.isin(r1["row"].to_numpy(), r0["row"].to_numpy())
    labels = read_model_table(v1["clean"])["label"].to_numpy()
    assert old.sum() == r0.num_rows and set(labels[old]) == {0, 1} and set(labels[~old]) == {2, 3}
    assert np.array_equal(r1["experience"].to_numpy(), np.where(old, 0, 1))
    assert inherit.experiences_of(r1, v1["rows"]) == [
        {"experience": 0, "data_version": v0["manifest_record"]["version"]},
        {"experience": 1, "data_version": v1["manifest_record"]["version"]}]
    split0 = dict(zip(r0["row"].to_pylist(), r0["split"].to_pylist()))
    assert all(split0[h] == s for h, s, o in zip(r1["row"].to_pylist(), r1["split"].to_pylist(), old) if o)
    assert v1["clean_report"]["experiences"] == {"0": int(old.sum()), "1": int((~old).sum())}


def test_the_stage_builds_the_reservoir_of_both_versions_from_the_parents_buffer(continual_lineage):
    v0, v1 = continual_lineage["v0"], continual_lineage["v1"]
    rec, table = v1["buffer_record"], pq.read_table(v1["buffer"] / buf.TABLE)
    new = training(v1).filter(pc.equal(training(v1)["experience"], 1))
    assert rec | {"sha256": None} == {
        "size": 40, "balance": "class", "seed": 0, "current_experience": 1,
        "data_version": v1["manifest_record"]["version"], "new_training_rows": new.num_rows,
        "parent_buffer": sha256_file(v0["buffer"] / buf.TABLE), "parent_rows_held_out_dropped": 0,
        "parent_not_carried": None, "rows": 40, "per_class": {"0": 10, "1": 10, "2": 10, "3": 10},
        "per_experience": {"0": 20, "1": 20}, "sha256": None}
    assert rec["sha256"] == sha256_file(v1["buffer"] / buf.TABLE)
    assert table.equals(buf.build(None, training(v1), 40, "class", 0))  # the reservoir of every training row
    assert v0["buffer_record"]["per_class"] == {"0": 20, "1": 20} and v0["buffer_record"]["parent_buffer"] is None


def test_the_same_seed_and_parent_give_the_same_bytes_another_seed_another_buffer(continual_lineage, tmp_path):
    v1, parent = continual_lineage["v1"], continual_lineage["parent"]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        build_buffer(Buffer(size=40, seed=seed), v1["clean"], v1["rows"], v1["transform"], parent, tmp_path / name)
    digest = {n: sha256_file(tmp_path / n / buf.TABLE) for n in "abc"}
    assert digest["a"] == digest["b"] == sha256_file(v1["buffer"] / buf.TABLE)
    assert (tmp_path / "a" / buf.RECORD).read_bytes() == (tmp_path / "b" / buf.RECORD).read_bytes()
    rows = {n: set(pq.read_table(tmp_path / n / buf.TABLE)["row"].to_pylist()) for n in "ac"}
    assert digest["c"] != digest["a"] and rows["c"] != rows["a"]


def test_no_held_out_row_enters_and_a_parents_one_is_dropped(continual_lineage, tmp_path):
    """A parent's buffer row that this data's split puts in test (here: one row's hash made a v1 test row's)
    is dropped and counted; every row of the buffer is a training row of this data."""
    v1 = continual_lineage["v1"]
    parent = pq.read_table(continual_lineage["parent"] / inherit.FILES["buffer"])
    rows = inherit.read_rows(v1["rows"])
    test_row = rows.filter(pc.equal(rows["split"], 2))["row"][0].as_py()
    hashes = parent["row"].to_numpy().copy()
    hashes[3] = test_row
    folder = tmp_path / "parent"
    folder.mkdir()
    pq.write_table(parent.set_column(parent.schema.get_field_index("row"), parent.schema.field("row"),
                                     pa.array(hashes)), folder / inherit.FILES["buffer"])
    rec = build_buffer(Buffer(size=40), v1["clean"], v1["rows"], v1["transform"], folder, tmp_path / "out")
    table = pq.read_table(tmp_path / "out" / buf.TABLE)
    assert rec["parent_rows_held_out_dropped"] == 1 and test_row not in table["row"].to_pylist()
    split = dict(zip(rows["row"].to_pylist(), rows["split"].to_pylist()))
    assert {split[r] for r in table["row"].to_pylist()} == {0} and table.num_rows == 40


def test_a_parents_buffer_of_another_preprocessing_is_not_carried(continual_lineage, tmp_path):
    v1 = continual_lineage["v1"]
    parent = pq.read_table(continual_lineage["parent"] / inherit.FILES["buffer"])
    folder = tmp_path / "parent"
    folder.mkdir()
    pq.write_table(parent.append_column("x64", pa.array(np.zeros(parent.num_rows, np.float32))),
                   folder / inherit.FILES["buffer"])
    rec = build_buffer(Buffer(size=40), v1["clean"], v1["rows"], v1["transform"], folder, tmp_path / "out")
    assert "columns differ" in rec["parent_not_carried"] and str(folder / inherit.FILES["buffer"]) in \
        rec["parent_not_carried"]
    assert rec["parent_buffer"] is None and rec["per_experience"] == {"1": 40}
    new = training(v1).filter(pc.equal(training(v1)["experience"], 1))
    assert pq.read_table(tmp_path / "out" / buf.TABLE).equals(buf.build(None, new, 40, "class", 0))


def test_rows_that_do_not_match_the_clean_table_are_refused(continual_lineage, tmp_path):
    v0, v1 = continual_lineage["v0"], continual_lineage["v1"]
    with pytest.raises(InputError, match="rerun clean"):
        build_buffer(Buffer(), v1["clean"], v0["rows"], v1["transform"], tmp_path, tmp_path / "out")
