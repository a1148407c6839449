"""clean: duplicates, unlabeled rows, per-column strategies, stable splits, train-only fitting."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tasks.clean import Raw
from tasks.data import transform
from tasks.data.hashing import assign_splits, first_occurrences, row_hash
from tasks.data.tables import ROW_GROUP_ROWS, read_model_table, read_table
from tasks.errors import InputError
from tasks.params import Split
from tests.tasks.conftest import run_clean, run_ingest, tiny_contract, tiny_csv

SPLIT_3 = Split(val_fraction=0.2, test_fraction=0.2, seed=1)


def test_report_counts_what_was_done(staged):
    report = json.loads(staged["report"].read_text())
    assert report["rows_in"] == 64
    assert report["duplicates_dropped"] == 2
    assert report["unlabeled_dropped"] == 1
    assert report["missing_values_filled"] == 1 and report["missing_by_column"] == {"c": 1}
    assert report["rows_out"] == 61 == sum(report["split_rows"].values())


def test_output_matches_the_declared_schema(staged):
    table = read_model_table(staged["clean"])
    assert table.column("label").null_count == 0
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
    raw = pq.read_table(staged["raw"]).slice(0, 1)
    arrays, _ = transform.apply(raw, t)
    table = read_model_table(staged["clean"])
    np.testing.assert_allclose([a[0].as_py() for a in arrays], [table[c][0].as_py() for c in t["features"]],
                               rtol=1e-6)


def test_split_depends_on_the_row_alone():
    rng = np.random.default_rng(0)
    table = pa.table({"a": rng.normal(size=3000), "b": rng.integers(0, 5, 3000), "label": rng.integers(0, 3, 3000)})
    params = Split(val_fraction=0.2, test_fraction=0.1, seed=3)
    split = assign_splits(row_hash(table, table.column_names), params)
    counts = np.bincount(split, minlength=3) / len(split)
    np.testing.assert_allclose(counts, [0.7, 0.2, 0.1], atol=0.03)
    # the same rows in another order, and in a bigger table, keep their splits
    order = rng.permutation(3000)
    again = assign_splits(row_hash(table.take(order), table.column_names), params)
    assert (again == split[order]).all()
    other_seed = assign_splits(row_hash(table, table.column_names), Split(val_fraction=0.2, test_fraction=0.1))
    assert (other_seed != split).any()


def test_appended_rows_never_move_existing_rows(tmp_path):
    rng = np.random.default_rng(1)
    lines = ["id,x,label"] + [f"{i},{rng.normal():.4f},{i % 3}" for i in range(300)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    run_ingest(tmp_path / "s.csv", tmp_path / "v1")
    run_clean(tmp_path / "v1", split=Split(key_columns=("id",)))
    lines += [f"{i},{rng.normal():.4f},{i % 3}" for i in range(300, 600)]
    (tmp_path / "s.csv").write_text("\n".join(lines) + "\n")
    run_ingest(tmp_path / "s.csv", tmp_path / "v2")
    run_clean(tmp_path / "v2", split=Split(key_columns=("id",)))
    v1, v2 = (pq.read_table(tmp_path / v / "raw.parquet") for v in ("v1", "v2"))
    s1, s2 = (read_table(tmp_path / v / "clean.arrow")["split"].to_pylist() for v in ("v1", "v2"))
    assert v2["id"].to_pylist()[:300] == v1["id"].to_pylist() and len(s2) == 600
    assert s2[:300] == s1


def test_per_column_strategies_outliers_and_categories(tmp_path):
    rows = ["age,city,income,label"]
    for i in range(200):
        age = "" if i % 10 == 0 else str(20 + i % 40)
        city = "" if i % 25 == 0 else ["paris", "oslo", "rome"][i % 3]
        income = "1000000" if i == 7 else str(1000 + 10 * (i % 50))
        rows.append(f"{age},{city},{income},{'yes' if i % 2 else 'no'}")
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    run_ingest(tmp_path / "s.csv", tmp_path)
    run_clean(tmp_path, missing_columns={"age": "mean"}, missing_category="mode", outliers=(0.0, 0.98),
              scaling="minmax", per_column=True)  # a table: each column its own scale
    t = json.loads((tmp_path / "transform.json").read_text())
    num = {c["name"]: c for c in t["numeric"]}
    assert num["age"]["strategy"] == "mean" and 20 <= num["age"]["fill"] <= 60
    assert num["age"]["scale"] < 100 < num["income"]["scale"]  # years and money, each by its own range
    assert num["income"]["clip"][1] < 1_000_000  # the outlier is clipped to the 98% quantile
    raw, outside = pq.read_table(tmp_path / "raw.parquet"), {}  # the report counts every value clipped, per column
    for c in ("age", "income"):  # every row is kept (no duplicates, all labeled): filled, then clipped
        x = np.nan_to_num(transform.as_float64(raw[c]), nan=num[c]["fill"])
        outside[c] = int(np.count_nonzero((x < num[c]["clip"][0]) | (x > num[c]["clip"][1])))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["clipped_by_column"] == {c: k for c, k in outside.items() if k} and outside["income"] >= 1
    assert report["values_clipped"] == sum(outside.values())
    assert t["categorical"][0]["categories"] == ["oslo", "paris", "rome"]  # mode filled, no extra category
    assert t["features"] == ["age", "income", "city=oslo", "city=paris", "city=rome"]
    x = read_model_table(tmp_path / "clean.arrow")
    assert 0 <= pa.compute.min(x["income"]).as_py() and pa.compute.max(x["income"]).as_py() <= 1.0 + 1e-6
    # one-hot features are stored as booleans, exactly one set per row (the mode fills a missing city)
    assert [x.schema.field(f).type for f in t["features"]] == [pa.float32()] * 2 + [pa.bool_()] * 3
    onehot = np.column_stack([x[f].to_numpy() for f in t["features"][2:]])
    assert (onehot.sum(axis=1) == 1).all()
    assert t["classes"] == ["no", "yes"]
    # an unseen category at prediction time becomes all zeros
    arrays, _ = transform.apply(pa.table({"age": [30.0], "city": ["lima"], "income": [1200.0]}), t)
    assert [a[0].as_py() for a in arrays[2:]] == [0.0, 0.0, 0.0]


def test_drop_strategy_and_text_normalisation(tmp_path):
    rows = ["txt,score,label"] + [f"Café  {'NOIR' if i % 2 else 'Crème'}  n{i},{'' if i % 7 == 0 else i},{i % 2}"
                                  for i in range(120)]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    run_ingest(tmp_path / "s.csv", tmp_path, text_column="txt")
    report = run_clean(tmp_path, missing="drop")
    assert report["incomplete_dropped"] == len(range(0, 120, 7))
    table = read_model_table(tmp_path / "clean.arrow")
    assert table["txt"][0].as_py().startswith("cafe ") and "  " not in table["txt"][0].as_py()
    assert table.schema.names == ["score", "txt", "label", "split"]


def test_column_without_training_values_is_named(tmp_path):
    (tmp_path / "s.csv").write_text("a,b,label\n" + "".join(f"{i},,{i % 2}\n" for i in range(40)))
    run_ingest(tmp_path / "s.csv", tmp_path, contract=tiny_contract(max_null_ratio=1.0))
    with pytest.raises(InputError, match="column 'b': no value in any training row"):
        run_clean(tmp_path)
    assert not (tmp_path / "clean.arrow").exists()


def test_missing_categories_take_the_fill_code_in_plain_and_dictionary_columns():
    t = {"numeric": [], "categorical": [{"name": "c", "fill": "(missing)", "categories": ["(missing)", "a", "b"],
                                         "encoding": "ordinal"}]}
    plain = pa.array(["a", None, "z", "b"])
    for values in (plain, plain.dictionary_encode()):
        assert transform.apply(pa.table({"c": values}), t)[0][0].to_pylist() == [1.0, 0.0, -1.0, 2.0]


@pytest.mark.parametrize("values", [[], [7], [3, 3, 3], [5, 1, 5, 2, 1, 1, 9]])
def test_first_occurrences_marks_the_first_of_each_value(values):
    h = np.array(values, np.uint64)
    expected = np.zeros(len(h), bool)
    expected[np.unique(h, return_index=True)[1]] = True
    assert first_occurrences(h).tolist() == expected.tolist()
    rng = np.random.default_rng(0)
    many = rng.integers(0, 5_000, 20_000).astype(np.uint64)  # most values repeat, some many times
    expected = np.zeros(len(many), bool)
    expected[np.unique(many, return_index=True)[1]] = True
    assert (first_occurrences(many) == expected).all()


def test_streams_in_batches_and_drops_duplicates_across_them(tmp_path):
    rng = np.random.default_rng(3)
    n = ROW_GROUP_ROWS + 5_000  # two row groups in the snapshot
    x = rng.normal(size=n)
    x[ROW_GROUP_ROWS + 7] = x[3]  # a copy of row 3 in the second row group
    label = rng.integers(0, 2, n)
    label[ROW_GROUP_ROWS + 7] = label[3]
    pq.write_table(pa.table({"x": x, "label": label}), tmp_path / "s.parquet")
    run_ingest(tmp_path / "s.parquet", tmp_path, image_shape=None)
    assert pq.ParquetFile(tmp_path / "raw.parquet").metadata.num_row_groups == 2
    starts, sizes = zip(*[(start, len(b)) for start, b in Raw(tmp_path / "raw.parquet", {}).batches(4096)])
    assert max(sizes) == 4096 and sum(sizes) == n and list(starts) == list(np.cumsum((0,) + sizes[:-1]))
    report = run_clean(tmp_path, batch_rows=4096)
    assert report["duplicates_dropped"] == 1 and report["rows_out"] == n - 1


def test_truncated_clean_table_is_named(staged):
    data = staged["clean"].read_bytes()
    staged["clean"].write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"clean.arrow: not a readable Arrow file"):
        read_model_table(staged["clean"])


def test_regression_target_is_standardised_on_training_rows(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.normal(size=400)
    target = 100.0 + 20.0 * x + rng.normal(size=400)
    pq.write_table(pa.table({"x": x, "y": target}), tmp_path / "s.parquet")
    run_ingest(tmp_path / "s.parquet", tmp_path, image_shape=None, label_column="y", task="regression",
               contract=tiny_contract(max_class_ratio=None))
    run_clean(tmp_path)
    t = json.loads((tmp_path / "transform.json").read_text())
    assert t["task"] == "regression" and t["classes"] == []
    table = read_model_table(tmp_path / "clean.arrow")
    assert table.schema.field("label").type == pa.float32()
    train = table.filter(pa.compute.equal(table["split"], "train"))["label"].to_numpy()
    assert abs(train.mean()) < 1e-5 and abs(train.std() - 1.0) < 1e-4  # standardised with train's own moments
    assert 95 < t["target"]["center"] < 105 and 15 < t["target"]["scale"] < 25


def test_regression_refuses_a_text_target(tmp_path):
    (tmp_path / "s.csv").write_text("x,y\n" + "".join(f"{i},{'high' if i % 2 else 'low'}\n" for i in range(120)))
    with pytest.raises(InputError, match=r"column 'y': ingest\.task is regression, so the label must hold numbers"):
        run_ingest(tmp_path / "s.csv", tmp_path, image_shape=None, label_column="y", task="regression")


# --- clean.classes: one output layer, in the declared order, across data versions -------------------------------


def _decoded(root) -> list[str]:
    """Each clean row's class, by name: the transform's classes indexed by the label column."""
    classes = json.loads((root / "transform.json").read_text())["classes"]
    return [classes[i] for i in read_model_table(root / "clean.arrow")["label"].to_pylist()]


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations([0, 1, 2, 3, 4]), as_text=st.booleans())
def test_declared_classes_are_the_transforms_in_their_order_and_each_row_keeps_its_class(tmp_path_factory, order,
                                                                                         as_text):
    """The data has 0, 1 and 2; clean.classes names them and two more, in any order, as numbers or text: the
    output layer is the declared list, and every row's class (decoded by it) is the one it has undeclared."""
    root = tmp_path_factory.mktemp("classes")
    run_ingest(tiny_csv(root / "s.csv", classes=3), root)
    run_clean(root, split=SPLIT_3)
    plain = _decoded(root)
    declared = tuple(str(c) if as_text else c for c in order)
    report = run_clean(root, split=SPLIT_3, classes=declared)
    assert json.loads((root / "transform.json").read_text())["classes"] == [str(c) for c in order]
    assert _decoded(root) == plain and report["classes"] == 5


def test_a_label_outside_the_declared_classes_is_refused_naming_the_key_and_column(tmp_path):
    run_ingest(tiny_csv(tmp_path / "s.csv", classes=3), tmp_path)
    with pytest.raises(InputError, match=r"label\(s\) \['2'\] of column 'label' are not in clean\.classes "
                                         r"\['1', '0'\]"):
        run_clean(tmp_path, split=SPLIT_3, classes=(1, 0))


def test_a_class_declared_twice_is_refused_when_params_load(tmp_path):
    import yaml

    from tasks.params import Clean, load_params
    from tests.conftest import ROOT

    with pytest.raises(ValueError, match=r"classes: a class is named twice in \[1, '1'\]"):
        Clean(classes=(1, "1"))  # the same class as the label column writes it, so the same output
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["clean"]["classes"] = [0, 1, 2, 0]
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(InputError, match=r"clean: classes: a class is named twice in \[0, 1, 2, 0\]"):
        load_params(tmp_path / "p.yaml")
