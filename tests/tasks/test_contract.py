"""The data contract: every bad input is refused with a message naming the file, the column or key and
what was expected, and the snapshot already in place (raw.parquet + manifest.json) stays byte-identical."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.data.contract import check, check_model_table, drift, format_violations, profile, violation
from tasks.data.hashing import assign_splits, row_hash
from tasks.errors import InputError
from tasks.ingest import failed_report_path
from tasks.params import ColumnRule, Contract, Drift, Ingest, Split
from tests.tasks.conftest import paths, run_clean, run_ingest, tiny_contract, tiny_csv


def digests(root: Path) -> dict:
    p = paths(root)
    return {k: hashlib.sha256(p[k].read_bytes()).hexdigest() for k in ("raw", "manifest")}


def report(root: Path) -> dict:
    """The report of the last ingest: a refused one writes it beside the DVC output."""
    failed = failed_report_path(paths(root)["contract"])
    return json.loads((failed if failed.exists() else paths(root)["contract"]).read_text())


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def root(tmp_path):
    """A folder already holding a good snapshot of the tiny CSV."""
    run_ingest(tiny_csv(tmp_path / "good.csv"), tmp_path)
    return tmp_path


def refused(root: Path, source, *words: str, contract: Contract | None = None, **ingest_params) -> str:
    """Ingest `source` into `root`: an InputError naming the file and every one of `words`; nothing lost."""
    before = digests(root)
    with pytest.raises(InputError) as e:
        run_ingest(source, root, contract, **ingest_params)
    msg = str(e.value)
    assert str(source) in msg, msg
    for w in words:
        assert w in msg, f"{w!r} not in: {msg}"
    assert digests(root) == before
    return msg


def test_truncated_parquet(root):
    src = root / "cut.parquet"
    pq.write_table(pq.read_table(root / "raw.parquet"), src)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    msg = refused(root, src)
    assert "parquet" in msg.lower() and ("cannot be read" in msg or "not a readable" in msg)


def test_wrong_delimiter_suggests_the_right_one(root):
    src = write_csv(root / "semi.csv", ["a;b;label", "1;2;0", "3;4;1"])
    refused(root, src, "ingest.delimiter", "';'", "(it is ',')")


def test_wrong_delimiter_with_decimal_commas_suggests_the_right_one(root):
    src = write_csv(root / "eu.csv", ["a;b;label", "1,5;2,25;0", "3,5;4,75;1"])
    refused(root, src, "ingest.delimiter", "';'")


def test_mixed_types_are_reported_with_rows(root):
    lines = ["a,b,label"] + [f"{i},{i * 2},{i % 2}" for i in range(20)]
    lines[5], lines[9] = "oops,8,0", "twelve,16,0"  # lines 6 and 10 of the file, as an editor counts them
    refused(root, write_csv(root / "mixed.csv", lines), "column 'a'", "mixed types", "mostly numbers")
    r = report(root)
    assert r["ok"] is False
    assert r["violations"] == [{"check": "type", "column": "a", "rows": 2,
                                "message": "mixed types: mostly numbers, but 2 value(s) are not",
                                "examples": ["line 6: 'oops'", "line 10: 'twelve'"]}]


def test_all_null_column(root):
    src = write_csv(root / "null.csv", ["a,b,label"] + [f"{i},,{i % 2}" for i in range(20)])
    refused(root, src, "column 'b'", "every value is missing", "at most 50% allowed")
    assert [(v["check"], v["column"], v["rows"]) for v in report(root)["violations"]] == [("missing", "b", 20)]


def test_label_only_in_val_or_test_is_refused_by_clean(tmp_path):
    lines = ["a,b,label"] + [f"{i},{i % 7},{i % 2}" for i in range(40)] + ["100,100,2"]  # class 2: one row
    run_ingest(write_csv(tmp_path / "rare.csv", lines), tmp_path)
    raw = pq.read_table(tmp_path / "raw.parquet")
    h = row_hash(raw, raw.column_names)
    seed = next(s for s in range(500) if (sp := assign_splits(h, Split(seed=s)))[-1] != 0
                and set(sp[:-1].tolist()) == {0, 1, 2})
    before, p = digests(tmp_path), paths(tmp_path)
    with pytest.raises(InputError) as e:
        run_clean(tmp_path, split=Split(seed=seed))
    msg = str(e.value)
    assert str(p["raw"]) in msg and "['2']" in msg and "in no training row" in msg and "clean.split" in msg
    assert not any(p[k].exists() for k in ("clean", "transform", "report"))
    assert digests(tmp_path) == before


def image_folder(folder: Path, extra: dict) -> Path:
    """Classes a and b, three 4x4 grayscale images each, plus `extra` {relative name: bytes or (mode, (w, h))}."""
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((4, 4), 10 * i + 100 * (c == "b"), np.uint8), "L").save(folder / c / f"{i}.png")
    for name, what in extra.items():
        if isinstance(what, bytes):
            (folder / name).write_bytes(what)
        else:
            Image.new(*what).save(folder / name)
    return folder


@pytest.mark.parametrize("extra, words", [
    ({"a/bad.png": b"this is not an image"}, ["a/bad.png", "not a readable image"]),
    ({"a/big.png": ("L", (5, 4)), "b/rgb.png": ("RGB", (4, 4))},
     ["2 bad image file(s)", "a/big.png: 4x5 L", "b/rgb.png: 4x4 RGB", "expected 4x4 L (8-bit grayscale)"]),
], ids=["corrupt", "size-and-mode"])
def test_bad_images_are_named(root, extra, words):
    folder = image_folder(root / "images", extra)
    refused(root, folder, *words, image_shape=(4, 4))
    for name in extra:  # without them the folder is fine
        (folder / name).unlink()
    assert run_ingest(folder, root, image_shape=(4, 4))["rows"] == 6


def latin1_csv(path: Path, header: str = "name,x,label") -> Path:
    path.write_bytes(f"{header}\ncafé,1,0\nnaïve,2,1\ncafé,3,0\n".encode("latin-1"))
    return path


def test_latin1_text_ingests_with_ingest_encoding(root):
    m = run_ingest(latin1_csv(root / "latin.csv"), root, encoding="latin-1")
    assert m["rows"] == 3
    assert pq.read_table(root / "raw.parquet")["name"].to_pylist() == ["café", "naïve", "café"]


def test_non_utf8_values_suggest_ingest_encoding(root):
    refused(root, latin1_csv(root / "latin.csv"), "column 'name'", "ingest.encoding")


def test_non_utf8_header_suggests_ingest_encoding(root):
    refused(root, latin1_csv(root / "latin.csv", header="café,x,label"), "ingest.encoding")


def test_empty_folder(root):
    (root / "empty").mkdir()
    refused(root, root / "empty", "the folder is empty", "expected data files")


def test_every_contract_violation_is_reported_at_once(root):
    lines = ["a,color,extra,label"] + [f"{i},{['red', 'blue', 'green'][i % 3]},{i},{int(i == 9)}"
                                       for i in range(10)]
    contract = tiny_contract(columns={"a": ColumnRule(type="number", min=0, max=5),
                                      "color": ColumnRule(allowed=("red", "blue")),
                                      "weight": ColumnRule(type="number")},
                             only_declared=True, min_rows=50, min_class_rows=2, max_class_ratio=3)
    failed = str(failed_report_path(paths(root)["contract"]))
    msg = refused(root, write_csv(root / "declared.csv", lines), "7 violation(s)", failed,
                  "10 data rows, at least 50 required", "column 'weight': declared column missing",
                  "column 'extra': column not declared in contract.columns",
                  "column 'a': 4 value(s) outside [0.0, 5.0] e.g. line 8: 6",
                  "column 'color': 3 value(s) not in ['red', 'blue'] e.g. line 4: 'green'",
                  "classes with fewer than 2 rows: {'1': 1}", "largest/smallest class is 9.0, at most 3.0 allowed",
                  contract=contract)
    assert len(msg.splitlines()) == 8
    r = report(root)
    assert r["ok"] is False
    assert [(v["check"], v["column"], v["rows"]) for v in r["violations"]] == [
        ("rows", None, 10), ("columns", "weight", 10), ("columns", "extra", 10), ("range", "a", 4),
        ("allowed", "color", 3), ("balance", "label", 1), ("balance", "label", 10)]
    assert r["violations"][3]["examples"] == ["line 8: 6", "line 9: 7", "line 10: 8", "line 11: 9"]


def test_allowed_values_of_float_and_bool_columns():
    params = Ingest(source="t.csv")
    t = pa.table({"x": [1.0, 2.0, 1.5], "flag": [True, False, True], "label": [0, 1, 0]})
    rules = {"x": ColumnRule(allowed=(1.0, 2.0, 1.5)), "flag": ColumnRule(allowed=(True, False)),
             "label": ColumnRule(allowed=(0.0, 1.0))}
    assert check(t, tiny_contract(columns=rules), params) == []


def label_csv(path: Path, labels: list[int], shift: int = 0) -> Path:
    return write_csv(path, ["a,b,label"] + [f"{i % 7 + shift},{i % 5},{y}" for i, y in enumerate(labels)])


@pytest.fixture
def shifted(tmp_path):
    """Data A (balanced labels) and B (90% one class, column a moved by five)."""
    a = label_csv(tmp_path / "A.csv", [0, 1] * 20)
    b = label_csv(tmp_path / "B.csv", [0] * 36 + [1] * 4, shift=5)
    return a, b


def test_drift_is_reported_without_the_gate(tmp_path, shifted):
    a, b = shifted
    version = run_ingest(a, tmp_path)["version"]
    m = run_ingest(b, tmp_path, tiny_contract(drift=Drift(gate=False)))
    d = report(tmp_path)["drift"]
    assert report(tmp_path)["ok"] is True and m["rows"] == 40
    assert d["against"] == version and d["label_shift"] == pytest.approx(0.4)
    assert d["exceeded"][0] == "label distribution moved by 0.400 (total variation), limit 0.1"
    assert d["exceeded"][1].startswith("column 'a': mean moved by")


def test_drift_gate_refuses_and_keeps_the_previous_snapshot(tmp_path, shifted):
    a, b = shifted
    run_ingest(a, tmp_path, tiny_contract(drift=Drift(gate=True)))
    refused(tmp_path, b, "2 violation(s)", "label distribution moved by 0.400", "limit 0.1", "column 'a'",
            contract=tiny_contract(drift=Drift(gate=True)))
    assert [v["check"] for v in report(tmp_path)["violations"]] == ["drift", "drift"]


def test_reingesting_the_current_data_after_a_refusal_has_no_drift(tmp_path, shifted):
    a, b = shifted
    gate = tiny_contract(drift=Drift(gate=True))
    run_ingest(a, tmp_path, gate)
    with pytest.raises(InputError):
        run_ingest(b, tmp_path, gate)
    run_ingest(a, tmp_path, gate)  # the snapshot in place, unchanged
    assert report(tmp_path)["drift"]["exceeded"] == []


def test_profile_and_drift_directly():
    a = pa.table({"x": [1.0, 2.0, 3.0, None], "c": ["u", "v", "u", "u"], "label": [0, 1, 0, 1]})
    p = profile(a, "label", None)
    assert p["rows"] == 4 and p["labels"] == {"0": 2, "1": 2}
    assert p["columns"]["x"] | {"std": 1} == {"kind": "number", "type": "double", "missing": 1, "non_finite": 0,
                                             "mean": 2.0, "std": 1, "min": 1.0, "max": 3.0}
    assert p["columns"]["c"]["top"] == {"u": 3, "v": 1}
    assert drift(None, p, Drift()) == {"against": None, "exceeded": []}
    b = profile(a.set_column(2, "label", pa.array([0, 0, 0, 1])), "label", None)
    d = drift(p | {"version": "v1"}, b, Drift(max_label_shift=0.2))
    assert d["against"] == "v1" and d["label_shift"] == 0.25 and len(d["exceeded"]) == 1


def test_format_violations_names_file_column_and_examples():
    v = [violation("range", "x", 2, "2 value(s) outside [0, 1]", ["row 1: 5", "row 4: -2"]),
         violation("rows", None, 3, "3 data rows, at least 10 required")]
    assert format_violations("src.csv", v, Path("r.json")).splitlines() == [
        "src.csv: the data contract failed, 2 violation(s) (full report: r.json):",
        "  - column 'x': 2 value(s) outside [0, 1] e.g. row 1: 5; row 4: -2",
        "  - 3 data rows, at least 10 required"]


def test_check_model_table_refuses_nan_features_and_labels_unseen_in_train():
    t = pa.table({"x0": pa.array([0.0, np.nan, 1.0, 2.0, 0.5, 3.0], pa.float32()), "label": [0, 1, 0, 2, 1, 1],
                  "split": ["train", "train", "val", "val", "val", "train"]})
    with pytest.raises(InputError) as e:
        check_model_table(t, Path("clean.parquet"), n_classes=3)
    assert str(e.value) == ("clean.parquet: fails the pipeline's checks: column 'x0': 1 non-finite value(s); "
                            "label(s) [2] appear in val but not in train")
    finite = t.filter(pa.array([True, False, True, True, True, True]))
    with pytest.raises(InputError, match=r"labels outside 0\.\.1 \(found 0\.\.2\)"):
        check_model_table(finite, Path("clean.parquet"), n_classes=2)
    assert check_model_table(finite.filter(pa.array([True, True, False, True, True])), Path("c.parquet"), 3) is None
