"""Ingest is the single gate: what a later stage would refuse or quietly spoil, the contract refuses first,
naming the column, the count and the lines; what it lets through (inf where allowed, huge but finite values)
clean handles and counts. A refusal leaves the snapshot in place, byte for byte."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tasks.augment import augment
from tasks.data.tables import read_model_table
from tasks.errors import InputError
from tasks.ingest import failed_report_path
from tasks.params import Augment, Clean, ColumnRule, Ingest, Split
from tests.tasks.conftest import paths, run_clean, run_ingest, tiny_contract, tiny_csv

SPLIT = Split(val_fraction=0.2, test_fraction=0.2, seed=3)  # a class needs 1/0.2 = 5 rows


def gate(source: Path, root: Path, contract=None, clean: Clean | None = None, **ingest_params) -> dict:
    """ingest with the gate on: the contract, and what clean (these params) would refuse."""
    p = paths(root)
    return ingest_with(Ingest(source=str(source), **ingest_params), contract or tiny_contract(), p,
                       clean or Clean(split=SPLIT))


def ingest_with(params, contract, p, clean):
    from tasks.ingest import ingest

    return ingest(params, contract, p["raw"], p["manifest"], p["contract"], clean=clean)


def digests(root: Path) -> dict:
    return {k: hashlib.sha256(p.read_bytes()).hexdigest() for k in ("raw", "manifest", "contract")
            if (p := paths(root)[k]).exists()}


@pytest.fixture
def root(tmp_path):
    """A folder holding a good snapshot of the tiny CSV."""
    run_ingest(tiny_csv(tmp_path / "good.csv"), tmp_path)
    return tmp_path


def refused(root: Path, source: Path, *words: str, **kw) -> dict:
    """The gate refuses `source`, naming it and every one of `words`; the snapshot stays; the failed report."""
    before = digests(root)
    with pytest.raises(InputError) as e:
        gate(source, root, **kw)
    msg = str(e.value)
    for w in (str(source), *words):
        assert w in msg, f"{w!r} not in: {msg}"
    assert digests(root) == before
    return json.loads(failed_report_path(paths(root)["contract"]).read_text())


def table_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header] + rows) + "\n")
    return path


def with_inf(path: Path, rows: int = 40, at=(3, 11, 17, 29), value: str = "inf") -> Path:
    """a, b, label; b is inf (or `value`) on the data rows `at` (0-based), so on the file's lines at + 2."""
    return table_csv(path, "a,b,label", [f"{i},{value if i in at else i % 9 * 1.5},{i % 2}" for i in range(rows)])


def test_a_few_inf_values_are_counted_exactly_with_their_lines(root):
    r = refused(root, with_inf(root / "inf.csv"), "column 'b': 4 value(s) inf or -inf",
                "contract.allow_non_finite", "e.g. line 5: inf; line 13: inf; line 19: inf")
    (v,) = r["violations"]
    assert (v["check"], v["column"], v["rows"]) == ("finite", "b", 4)
    assert v["examples"] == ["line 5: inf", "line 13: inf", "line 19: inf", "line 31: inf"]


def test_a_column_of_inf_only(root):
    r = refused(root, with_inf(root / "all.csv", at=range(40), value="-inf"), "column 'b': 40 value(s) inf or -inf")
    assert [(v["check"], v["rows"]) for v in r["violations"]] == [("finite", 40)]
    allowed = tiny_contract(allow_non_finite=True)  # allowed, they are missing values: all of them
    r = refused(root, root / "all.csv", "column 'b': every value is missing or non-finite", contract=allowed)
    assert [v["check"] for v in r["violations"]] == ["missing"]


@pytest.mark.parametrize("outliers", [None, (0.05, 0.95)], ids=["no-clipping", "clipping"])
def test_allowed_inf_is_filled_as_missing_and_counted_by_clean(tmp_path, outliers):
    src = with_inf(tmp_path / "inf.csv")
    contract = tiny_contract(columns={"b": ColumnRule(allow_non_finite=True)})  # this column only
    gate(src, tmp_path, contract, Clean(split=SPLIT, outliers=outliers))
    report = run_clean(tmp_path, split=SPLIT, outliers=outliers)
    assert report["non_finite_filled"] == 4 and report["non_finite_by_column"] == {"b": 4}
    assert report["missing_values_filled"] == 0
    t = json.loads(paths(tmp_path)["transform"].read_text())
    b = next(c for c in t["numeric"] if c["name"] == "b")
    assert math.isfinite(b["center"]) and math.isfinite(b["scale"])  # inf went into no statistic
    clean = read_model_table(paths(tmp_path)["clean"])
    assert pc.all(pc.is_finite(clean["b"])).as_py()
    out = augment(Augment(), paths(tmp_path)["clean"], paths(tmp_path)["transform"], paths(tmp_path)["splits"])
    assert out["rows"]["train"] > 0  # its boundary check (finite features) passes
    if outliers:  # clipped to the training quantiles, and counted: exactly the kept values outside them
        raw = pq.read_table(paths(tmp_path)["raw"])
        x = pc.cast(raw["b"], pa.float64()).to_numpy()
        x = np.where(np.isinf(x), b["fill"], x)
        lo, hi = b["clip"]
        a = raw["a"].to_numpy().astype(float)
        assert report["clipped_by_column"] == {"a": int(((a < t["numeric"][0]["clip"][0]) |
                                                         (a > t["numeric"][0]["clip"][1])).sum()),
                                               "b": int(((x < lo) | (x > hi)).sum())}
        assert report["values_clipped"] == sum(report["clipped_by_column"].values()) > 0
    else:
        assert report["clipped_by_column"] == {} and report["values_clipped"] == 0


def test_allowing_inf_in_one_column_leaves_the_others_refused(root):
    src = table_csv(root / "two.csv", "a,b,label", [f"{'inf' if i == 2 else i},{'-inf' if i == 5 else i},{i % 2}"
                                                   for i in range(20)])
    r = refused(root, src, "column 'a': 1 value(s) inf or -inf", "line 4: inf",
                contract=tiny_contract(columns={"b": ColumnRule(allow_non_finite=True)}))
    assert [v["column"] for v in r["violations"]] == ["a"]


def test_an_inf_label_is_refused_even_where_inf_is_allowed(root):
    src = table_csv(root / "y.csv", "x,y", [f"{i},{'inf' if i == 7 else i * 0.5}" for i in range(30)])
    refused(root, src, "column 'y': 1 value(s) inf or -inf; a label must be a finite number", "line 9: inf",
            contract=tiny_contract(allow_non_finite=True), label_column="y", task="regression")


def test_one_class_is_refused(root):
    src = table_csv(root / "one.csv", "a,b,label", [f"{i},{i % 3},yes" for i in range(30)])
    r = refused(root, src, "column 'label': one class only ('yes', 30 rows): a classifier needs at least two")
    assert [(v["check"], v["column"]) for v in r["violations"]] == [("labels", "label")]


def test_a_class_too_small_for_every_split_is_refused_with_the_rule(root):
    labels = ["rare"] * 4 + ["a", "b"] * 18
    src = table_csv(root / "small.csv", "a,b,label", [f"{i},{i % 3},{y}" for i, y in enumerate(labels)])
    refused(root, src, "column 'label'", "classes with fewer than 5 rows", "{'rare': 4}", "1/0.2 = 5 rows")
    gate(src, root, clean=Clean(split=Split(val_fraction=0.25, test_fraction=0.25, seed=3)))  # 4 rows suffice


def test_an_empty_split_is_refused_exactly_as_clean_would(root):
    src = table_csv(root / "few.csv", "x,y", [f"{i},{i * 1.5}" for i in range(4)])
    seed = next(s for s in range(200) if _splits_of(src, Split(seed=s)) == {0, 1})  # no test row
    r = refused(root, src, "column 'y': clean cannot split the rows: the test split has no rows",
                clean=Clean(split=Split(seed=seed)), label_column="y", task="regression")
    assert [v["check"] for v in r["violations"]] == ["split"]
    run_ingest(src, root / "plain", label_column="y", task="regression")  # without the gate: clean refuses it
    with pytest.raises(InputError, match="the test split has no rows"):
        run_clean(root / "plain", split=Split(seed=seed))


def _splits_of(src: Path, split: Split) -> set[int]:
    from tasks.data.hashing import assign_splits, row_hash

    t = pa.csv.read_csv(src)
    return set(assign_splits(row_hash(t, t.column_names), split).tolist())


@pytest.mark.parametrize("target, words", [
    (["3.5"] * 30, "every target value is 3.5: a regression needs at least two distinct values"),
    ([str(i) if i != 4 else "1e39" for i in range(30)], "1 value(s) beyond ±3.4e+38"),
], ids=["constant", "beyond-float32"])
def test_regression_targets(root, target, words):
    src = table_csv(root / "t.csv", "x,y", [f"{i},{v}" for i, v in enumerate(target)])
    refused(root, src, "column 'y'", words, label_column="y", task="regression")


def test_values_beyond_float32_are_refused_and_huge_finite_ones_are_scaled_finite(tmp_path):
    src = table_csv(tmp_path / "big.csv", "a,b,label", [f"{i},{'1e308' if i == 6 else i},{i % 2}" for i in range(40)])
    refused_root = tmp_path / "r"
    with pytest.raises(InputError, match=r"column 'b': 1 value\(s\) beyond ±3\.4e\+38.* line 8: 1e\+308"):
        gate(src, refused_root)
    for scaling in ("standard", "minmax", "none"):
        src.write_text(src.read_text().replace("1e+308", "1e308").replace("1e308", "3e38"))
        root = tmp_path / scaling
        gate(src, root)
        report = run_clean(root, split=SPLIT, scaling=scaling, per_column=scaling == "minmax")
        clean = read_model_table(paths(root)["clean"])
        assert all(pc.all(pc.is_finite(clean[c])).as_py() for c in ("a", "b")), scaling
        assert report["values_saturated"] == 0


def test_a_scaled_value_far_beyond_the_training_spread_is_saturated_and_counted():
    from tasks.data import transform

    t = {"numeric": [{"name": "x", "strategy": "median", "fill": 0.0, "clip": None, "center": 0.0, "scale": 1e-30,
                      "limit": transform.SCALED_LIMIT}], "categorical": []}
    counts = {}
    (x,), _ = transform.apply(pa.table({"x": [1e-31, 1.0, -2.0, float("inf")]}), t, counts=counts)
    assert x.to_pylist() == [pytest.approx(0.1), 65504.0, -65504.0, 0.0]  # inf: missing, filled
    assert counts == {"saturated": {"x": 2}}


def test_huge_integers_are_numbers_not_a_crash(tmp_path):
    src = table_csv(tmp_path / "ints.csv", "id,label", [f"{2**62 + i},{i % 2}" for i in range(40)])
    gate(src, tmp_path)  # float64 rounds them all to 2**62, but they are 40 distinct rows, not duplicates
    assert run_clean(tmp_path, split=SPLIT)["duplicates_dropped"] == 0
    assert read_model_table(paths(tmp_path)["clean"]).num_rows == 40


@pytest.mark.parametrize("header, rows, words", [
    ("a,split,label", [f"{i},{i},{i % 2}" for i in range(20)], "column 'split': the name 'split' is taken"),
    ("label,x,y", [f"{i},{i},{i % 2}" for i in range(20)], "column 'label': the name 'label' is taken"),
    ("c=a,c,label", [f"{i},{'a' if i % 3 else 'b'},{i % 2}" for i in range(20)],
     "column 'c=a': the feature 'c=a' clean would make"),
], ids=["split", "label", "one-hot-clash"])
def test_names_the_pipeline_takes_for_itself(root, header, rows, words):
    label = header.split(",")[-1]
    refused(root, table_csv(root / "names.csv", header, rows), words, label_column=label)


def test_clean_params_the_data_cannot_meet_are_named(root):
    rows = [f"{i},{'v' + str(i)},{i % 2}" for i in range(40)]
    src = table_csv(root / "cats.csv", "a,c,label", rows)
    refused(root, src, "column 'c':", "more than clean.max_categories (5)", clean=Clean(split=SPLIT, max_categories=5))
    refused(root, src, "column 'nope'", "clean.split.key_columns",
            clean=Clean(split=Split(val_fraction=0.2, test_fraction=0.2, key_columns=("nope",))))
    refused(root, src, "column 'c'", "'mean' needs numbers", clean=Clean(split=SPLIT, missing_columns={"c": "mean"}))


def test_every_table_the_gate_passes_cleans(tmp_path):
    """The digits as shipped pass the gate with the shipped clean params, and clean takes them."""
    from tasks.params import load_params
    from tests.conftest import ROOT

    p = load_params(ROOT / "params.yaml")
    ingest_with(p.ingest, p.contract, paths(tmp_path), p.clean)
    assert run_clean(tmp_path, **p.clean.model_dump())["rows_out"] > 1700
