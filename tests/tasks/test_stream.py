"""ingest.stream: a class- or domain-incremental stream of one source, each experience a new data version whose
earlier rows are byte-identical; a property of the stream function on random tables; every refusal names its key."""

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

from tasks.data.hashing import row_hash
from tasks.data.stream import domain_experiences, stream
from tasks.errors import InputError
from tasks.params import Ingest, Stream, load_params
from tests.conftest import ROOT
from tests.tasks.conftest import paths, run_ingest

DIGITS = "pkg:sklearn.datasets/data/digits.csv.gz"
PIXELS = [f"x{i}" for i in range(64)]


def digits(root, per_class=None, labels=None, **stream_params) -> tuple[dict, pa.Table]:
    """The digits ingested into `root` with the stream `stream_params` (tiny_contract: no row minimum)."""
    m = run_ingest(DIGITS, root, header=False, image_shape=(8, 8), per_class=per_class, labels=labels,
                   stream=Stream(**stream_params))
    return m, pq.read_table(paths(root)["raw"])


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> pa.Table:
    """The digits as ingest reads them, no stream (int64 pixels, in source order)."""
    return digits(tmp_path_factory.mktemp("source"))[1]


def rows_of(table: pa.Table) -> list[tuple]:
    """Each row as the repr of its values: equal only when byte for byte equal (-0.0 is not 0.0, NaN is NaN)."""
    return [tuple(repr(v) for v in r.values()) for r in table.to_pylist()]


def pixels(table: pa.Table) -> np.ndarray:
    return np.column_stack([table[c].to_numpy().astype(np.float64) for c in PIXELS])


def test_class_incremental_digits_grow_by_two_classes_a_version_and_keep_every_row(tmp_path, src):
    by_label = Counter(src["label"].to_pylist())
    versions = [digits(tmp_path / str(k), kind="class_incremental", upto=k) for k in range(5)]
    for k, (m, t) in enumerate(versions):
        assert set(t["label"].to_pylist()) == set(range(2 * k + 2))
        assert m["stream"] == {"kind": "class_incremental", "experiences": 5, "upto": k,
                               "classes": [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]],
                               "rows": [by_label[2 * j] + by_label[2 * j + 1] for j in range(k + 1)]}
        assert m["rows"] == t.num_rows == sum(m["stream"]["rows"]) and t.schema == src.schema
        assert json.loads(paths(tmp_path / str(k))["contract"].read_text())["stream"] == m["stream"]
        same = src.filter(pa.compute.less(src["label"], 2 * k + 2))
        assert rows_of(t) == rows_of(same)  # the source's rows of those classes, unchanged and in order
    for (_, old), (_, new) in zip(versions, versions[1:]):
        assert not Counter(rows_of(old)) - Counter(rows_of(new))  # version k inside version k+1, byte for byte
    assert len({m["version"] for m, _ in versions}) == 5
    assert rows_of(versions[-1][1]) == rows_of(src)  # every experience: the whole source


def test_the_classes_are_those_ingest_labels_keeps_and_per_class_samples_each(tmp_path):
    m, t = digits(tmp_path / "a", labels=[0, 1, 2, 3, 4, 5], kind="class_incremental", experiences=3, upto=1)
    assert m["stream"]["classes"] == [[0, 1], [2, 3], [4, 5]] and set(t["label"].to_pylist()) == {0, 1, 2, 3}
    m, t = digits(tmp_path / "b", per_class=10, kind="class_incremental", upto=1)
    assert m["stream"]["rows"] == [20, 20] and Counter(t["label"].to_pylist()) == {c: 10 for c in range(4)}
    assert m["selection"] == {"labels": None, "per_class": 10, "sample_seed": 0, "rows_before": 1797,
                              "rows_after": 40}
    m2, t2 = digits(tmp_path / "c", per_class=10, kind="class_incremental", upto=2)
    assert not Counter(rows_of(t)) - Counter(rows_of(t2))  # a class's sample is its own: still cumulative


def test_ingest_says_which_experiences_the_snapshot_holds(tmp_path, capsys):
    digits(tmp_path / "a", kind="class_incremental", upto=1)
    digits(tmp_path / "b", kind="domain_incremental", upto=2)
    out = capsys.readouterr().out
    assert "ingest: stream class_incremental: experiences 0..1 of 5 in this snapshot, rows 360 + 360 " \
           "(classes [0, 1], [2, 3])" in out
    assert "ingest: stream domain_incremental: experiences 0..2 of 5 in this snapshot, rows 351 + 352 + 371 " \
           "(rotated by up to 30 degrees, noise std up to 2)" in out


def test_a_new_version_in_place_is_compared_with_the_last_one(tmp_path):
    """The same source file, another stream: its drift is measured, not the last version's kept."""
    m0, _ = digits(tmp_path, kind="class_incremental", upto=0)
    m1, _ = digits(tmp_path, kind="class_incremental", upto=1)
    report = json.loads(paths(tmp_path)["contract"].read_text())
    assert report["drift"]["against"] == m0["version"] != m1["version"] and report["drift"]["label_shift"] > 0.4


def domain_versions(src, root, **stream_params) -> tuple[np.ndarray, list[pa.Table]]:
    """Each source row's experience, and versions 0..4 of the digits' domain-incremental stream."""
    experience = domain_experiences(row_hash(src, src.column_names), Stream(**stream_params))
    tables = [digits(root / str(k), kind="domain_incremental", upto=k, **stream_params)[1] for k in range(5)]
    for k, t in enumerate(tables):
        assert t.num_rows == int((experience <= k).sum())
    return experience, tables


def test_domain_incremental_digits_drift_more_each_experience_and_never_move_an_earlier_row(tmp_path, src):
    experience, versions = domain_versions(src, tmp_path)
    assert 300 < min(np.bincount(experience)) and max(np.bincount(experience)) < 420  # about a fifth each
    last, x = versions[-1], pixels(src)
    assert last["label"].equals(src["label"]) and last.schema.field("x0").type == pa.float64()
    for j, t in enumerate(versions):  # version j holds version 4's rows of experiences 0..j, byte for byte
        assert rows_of(t) == rows_of(last.filter(pa.array(experience <= j)))
    diffs = [np.abs(pixels(last)[experience == j] - x[experience == j]).mean() for j in range(5)]
    assert diffs[0] == 0  # experience 0: the source rows' values
    assert all(a < b for a, b in zip(diffs, diffs[1:])), diffs


def test_rotation_alone_and_noise_alone(tmp_path, src):
    x = pixels(src)
    experience, rotated = domain_versions(src, tmp_path / "r", noise_std=0.0)
    y = pixels(rotated[-1])
    diffs = [np.abs(y[experience == j] - x[experience == j]).mean() for j in range(5)]
    assert diffs[0] == 0 and all(a < b for a, b in zip(diffs, diffs[1:])), diffs
    assert (y.min(), y.max()) == (0, 16)  # bilinear: between the pixels it mixes
    experience, noised = domain_versions(src, tmp_path / "n", rotation_degrees=0.0, noise_std=0.5)
    d = pixels(noised[-1]) - x
    for j in range(1, 5):  # Gaussian noise of std j * noise_std, mean 0
        assert abs(d[experience == j].std() / (0.5 * j) - 1) < 0.05 and abs(d[experience == j].mean()) < 0.05
    assert len(src) == noised[-1].num_rows


def test_the_same_params_give_the_same_bytes_and_another_seed_another_stream(tmp_path):
    a, _ = digits(tmp_path / "a", kind="domain_incremental", upto=4)
    b, _ = digits(tmp_path / "b", kind="domain_incremental", upto=4)
    c, _ = digits(tmp_path / "c", kind="domain_incremental", upto=4, seed=1)
    assert paths(tmp_path / "a")["raw"].read_bytes() == paths(tmp_path / "b")["raw"].read_bytes()
    assert a["version"] == b["version"] != c["version"] and a["stream"]["rows"] != c["stream"]["rows"]


# ---- the stream function on small random tables -------------------------------------------------------------

LABELS = st.sampled_from([0, 1, 2, 3, 4, 5]) | st.none()
NAMES = st.sampled_from(["cat", "dog", "青", "1", "", "owl"]) | st.none()
FLOATS = st.sampled_from([0.5, -0.0, 0.0, 3.25, None, float("nan")])


@st.composite
def tables(draw):
    """2x2 'images' (or, with a text tag, a table) with numeric or text labels; rows repeat now and then."""
    n = draw(st.integers(0, 40))
    numeric = draw(st.booleans())
    col = lambda s: draw(st.lists(s, min_size=n, max_size=n))  # noqa: E731
    cols = {"p0": pa.array(col(st.integers(0, 3)), pa.int64()), "p1": pa.array(col(FLOATS), pa.float64()),
            "p2": pa.array(col(st.integers(0, 2)), pa.int64()), "p3": pa.array(col(FLOATS), pa.float64())}
    image = draw(st.booleans())
    if not image:
        cols["tag"] = pa.array(col(NAMES), pa.string())
    cols["label"] = pa.array(col(LABELS if numeric else NAMES), pa.int64() if numeric else pa.string())
    return pa.table(cols), image


def values(table: pa.Table) -> list[tuple]:
    """Rows by value (1 and 1.0 agree, NaN is NaN): the source's rows and experience 0's."""
    return [tuple("nan" if v != v else v for v in r.values()) for r in table.to_pylist()]


@settings(derandomize=True, max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=tables(), kind=st.sampled_from(["class_incremental", "domain_incremental"]), e=st.integers(2, 4),
       seed=st.integers(-2, 2**64), noise=st.sampled_from([0.0, 0.5, 3.0]), rotation=st.sampled_from([0.0, 30.0]),
       order=st.randoms(use_true_random=False))
def test_the_stream_is_cumulative_a_partition_and_blind_to_row_order(data, kind, e, seed, noise, rotation, order):
    table, image = data

    def params(k: int) -> Ingest:
        return Ingest(source="x", image_shape=(2, 2) if image else None, stream=Stream(
            kind=kind, experiences=e, upto=k, seed=seed, noise_std=noise, rotation_degrees=rotation * image))

    labelled = [v for v in table["label"].to_pylist() if v is not None]
    classes = sorted(set(labelled))
    if kind == "class_incremental" and (len(classes) < e or len(classes) % e):
        with pytest.raises(InputError, match=rf"ingest\.stream\.experiences: {e} experiences cannot share the "
                                             rf"{len(classes)} classes of label column 'label'"):
            stream(table, params(0))
        return
    cuts = [stream(table, params(k)) for k in range(e)]
    for old, new in zip(cuts, cuts[1:]):  # version k inside version k+1, its rows byte for byte
        assert set(old.rows) <= set(new.rows) and list(old.rows) == sorted(old.rows)
        assert rows_of(old.table) == rows_of(new.table.take(pa.array(np.isin(new.rows, old.rows).nonzero()[0])))
    last = cuts[-1]
    where = dict(zip(last.rows.tolist(), last.experience.tolist()))
    for k, cut in enumerate(cuts):
        assert all(where[r] == x <= k for r, x in zip(cut.rows.tolist(), cut.experience.tolist()))
    if kind == "class_incremental":  # every labelled row, its experience its label's group
        assert list(last.rows) == [i for i, v in enumerate(table["label"].to_pylist()) if v is not None]
        size = len(classes) // e
        groups = [classes[j * size:(j + 1) * size] for j in range(e)]
        assert last.record["classes"] == groups
        assert all(table["label"][int(r)].as_py() in groups[x] for r, x in where.items())
        assert rows_of(last.table) == rows_of(table.take(pa.array(last.rows, pa.int64())))  # unchanged
    else:  # every row, in source order; experience 0 the source's values; labels and text never touched
        assert list(last.rows) == list(range(table.num_rows))
        zero = last.experience == 0
        assert values(last.table.filter(pa.array(zero))) == values(table.filter(pa.array(zero)))
        assert last.table["label"].equals(table["label"])
        assert image or last.table["tag"].equals(table["tag"])
    if kind == "domain_incremental":  # a row's drift is its own: rows appended to the source change no other
        head = stream(table.slice(0, table.num_rows // 2), params(e - 1))
        assert rows_of(head.table) == rows_of(last.table.slice(0, head.table.num_rows))
    perm = list(range(table.num_rows))
    order.shuffle(perm)
    for k in (0, e - 1):
        shuffled = stream(table.take(pa.array(perm, pa.int64())), params(k))
        assert Counter(rows_of(shuffled.table)) == Counter(rows_of(cuts[k].table))
        assert shuffled.record == cuts[k].record
        assert Counter(shuffled.experience.tolist()) == Counter(cuts[k].experience.tolist())


# ---- refusals ------------------------------------------------------------------------------------------------

def test_each_refusal_names_its_key(tmp_path):
    with pytest.raises(ValidationError, match=r"ingest\.stream\.upto 5 must be below ingest\.stream\.experiences "
                                              r"\(5\): the experiences are 0\.\.4"):
        Stream(upto=5)
    with pytest.raises(ValidationError, match=r"ingest\.stream\.kind class_incremental cuts the classes .* "
                                              r"ingest\.task is regression"):
        Ingest(source="x", task="regression", stream=Stream(kind="class_incremental"))
    with pytest.raises(ValidationError, match=r"ingest\.stream\.rotation_degrees 15\.0 rotates images, and "
                                              r"ingest\.image_shape is not set"):
        Ingest(source="x", stream=Stream(kind="domain_incremental"))
    Ingest(source="x", stream=Stream(kind="domain_incremental", rotation_degrees=0))  # noise alone: a table's
    Ingest(source="x", task="regression", stream=Stream(kind="domain_incremental", rotation_degrees=0))


def test_params_yaml_names_the_stream_key(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"]["stream"] |= {"kind": "class_incremental", "upto": 7}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"- ingest\.stream: ingest\.stream\.upto 7 must be below ingest\.stream\."
                                         r"experiences \(5\): the experiences are 0\.\.4$"):  # not the section
        load_params(tmp_path / "params.yaml")


def test_too_few_rows_for_the_contract_points_at_the_stream(tmp_path):
    """One class-incremental experience of the digits is 360 rows, and params.yaml's contract wants 500."""
    with pytest.raises(InputError, match=r"360 data rows, at least 500 required \(ingest\.stream\.upto 0 holds a "
                                         r"part of the source: lower contract\.min_rows\)"):
        run_ingest(DIGITS, tmp_path, load_params(ROOT / "params.yaml").contract, header=False, image_shape=(8, 8),
                   stream=Stream(kind="class_incremental"))
    assert not paths(tmp_path)["raw"].exists()


def test_classes_that_do_not_share_out_are_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(InputError, match=r"ingest\.stream\.experiences: 3 experiences cannot share the 10 classes "
                                         r"of label column 'label' equally .* it divides: \[2, 5, 10\]"):
        digits(tmp_path, kind="class_incremental", experiences=3)
    with pytest.raises(InputError, match=r"ingest\.stream\.experiences: 4 experiences cannot share the 2 classes"):
        digits(tmp_path, labels=[3, 7], kind="class_incremental", experiences=4)
    assert not paths(tmp_path)["raw"].exists()


def test_a_missing_label_column_and_unrotatable_pixels_are_named(tmp_path):
    table = pa.table({"a": [1, 2], "b": ["x", "y"], "y": [0, 1]})
    with pytest.raises(InputError, match=r"ingest\.stream\.kind class_incremental: label column 'label' not in "
                                         r"the source \(columns: a, b, y\); set ingest\.label_column"):
        stream(table, Ingest(source="x", stream=Stream(kind="class_incremental", experiences=2)))
    rotated = Ingest(source="x", label_column="y", image_shape=(1, 2),
                     stream=Stream(kind="domain_incremental", experiences=2, upto=1))
    with pytest.raises(InputError, match=r"ingest\.stream\.rotation_degrees: rotating needs ingest\.image_shape "
                                         r"1x2's 2 numeric pixel columns besides the label, found 2 columns, not "
                                         r"numbers: b \(string\)"):
        stream(table, rotated)
    src = tmp_path / "s.csv"
    pacsv.write_csv(pa.table({"a": [1, 2, 3], "label": [0, 1, 0]}), src)
    with pytest.raises(InputError, match=r"ingest\.stream\.rotation_degrees: rotating needs ingest\.image_shape 2x2"):
        run_ingest(src, tmp_path, image_shape=(2, 2), stream=Stream(kind="domain_incremental", upto=1))
