"""The gate as a property (DESIGN.md: whatever ingest accepts, the later stages can train on; whatever it
refuses leaves nothing changed).

Hypothesis writes messy tables as a CSV, Parquet or JSON-lines source: integers up to 2**62, floats with
NaN, inf, -inf, 1e308, 3e38 and the smallest subnormal, booleans, categories, free text, nulls, dates
(Parquet and CSV carry them, JSON as strings), a column of numbers and words mixed, non-ASCII names and
text, one class, tiny classes, regression targets; and clean params to go with them. Each table is ingested,
with the gate on, into a copy of a folder that already holds a good snapshot and what clean and augment
made of it:

- accepted: clean, augment, the train stage's checks and one training step (training/launch.py's precheck,
  training/data.py's load_split, the model config train builds, a forward and backward of a tiny MLP), and
  evaluate (its whole path, on that model's weights) run without an error;
- refused: the message names the source, and every column the report blames; the snapshot, the manifest,
  the contract report and every downstream file are byte-identical.

Derandomized (the same examples on every run) and bounded: 120 examples, about half accepted, 20-45 s on
2 busy cores.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tasks.augment import augment
from tasks.clean import clean
from tasks.errors import InputError
from tasks.ingest import failed_report_path, ingest
from tasks.params import MLP, Augment, Clean, Evaluate, Ingest, Split, Train, load_params
from tests.conftest import ROOT
from tests.tasks.conftest import paths, tiny_contract, tiny_csv

pytestmark = pytest.mark.slow

NAMES = ["a", "b", "x1", "température", "名前", "größe z", "a,b", "c=a"]
LABELS = ["label", "y", "Zielgröße"]
CALM = st.floats(-1e3, 1e3)
WILD = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [math.nan, math.inf, -math.inf, 1e308, -1e308, 3e38, -3e38, 5e-324, -0.0])
WORDS = st.sampled_from(["red", "grün", "青", " x ", "a"])
TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")) | st.sampled_from(["\n", "\t", " "]), min_size=1,
               max_size=12)
VALUES = {  # a column's kind: its values and its Arrow type
    "int": (st.integers(-5, 5) | st.integers(-(2**62), 2**62), pa.int64()),
    "float": (CALM, pa.float64()),
    "wild": (st.one_of(CALM, CALM, CALM, WILD), pa.float64()),  # now and then inf, NaN, 1e308, a subnormal
    "inf": (st.one_of(CALM, CALM, CALM, st.sampled_from([math.inf, -math.inf, math.nan])), pa.float64()),
    "huge": (st.one_of(CALM, CALM, st.floats(-3.4e38, 3.4e38), st.sampled_from([3e38, -3e38, 5e-324])), pa.float64()),
    "beyond": (CALM, pa.float64()),  # and one value past float32's range (sources() puts it in)
    "bool": (st.booleans(), pa.bool_()),
    "category": (WORDS, pa.string()),
    "null": (st.none(), pa.null()),
    "date": (st.dates(date(1990, 1, 1), date(2030, 1, 1)), pa.date32()),
    "mixed": (st.integers(0, 99) | st.integers(0, 99) | st.sampled_from(["x", "oops"]), pa.string()),
}
PLAIN = ["int", "float", "category", "bool"] * 2 + ["inf", "huge", "beyond"]  # what a plausible table holds
ROUGH = PLAIN * 3 + ["wild", "wild", "null", "date", "mixed"]  # and what a rough one may hold besides


@st.composite
def column(draw, values: st.SearchStrategy, n: int, rough: bool) -> list:
    """n values: none missing, a few, or (rough) more than half."""
    out = draw(st.lists(values, min_size=n, max_size=n))
    gaps = draw(st.sampled_from(["none", "few"] * 3 + (["many"] if rough else [])))
    k = {"none": 0, "few": draw(st.integers(1, max(1, n // 5))), "many": n // 2 + 1}[gaps]
    for i in draw(st.permutations(range(n)))[:k]:
        out[i] = None
    return out


@st.composite
def labels(draw, n: int, rough: bool) -> tuple[str, list]:
    """Classes, balanced or (rough) one of them tiny, or one class only; a few rows without one."""
    pool, kind = draw(st.sampled_from([([0, 1, 2], "int"), (["ja", "nein", "vielleicht"], "category"),
                                       ([True, False], "bool")]))
    k = min(draw(st.sampled_from([2, 3, 2, 3, 1] if rough else [2, 3])), len(pool))
    tiny = draw(st.sampled_from([None, 1, 3])) if rough and k > 1 else None  # rows of the last class

    def label_of(r: int):  # r: the row's place in a shuffled order
        if tiny:
            return pool[k - 1] if r < tiny else pool[r % (k - 1)]
        return pool[r % k]

    unlabeled = draw(st.integers(0, n // 8))
    return kind, [None if r >= n - unlabeled else label_of(r) for r in draw(st.permutations(range(n)))]


@st.composite
def sources(draw) -> dict:
    """A table (name -> (kind, values)), its label and task, and the file format it is written in. Half
    the tables are plausible (enough rows, the plain kinds, a few gaps), half rough: anything goes."""
    rough = draw(st.booleans())
    n = draw(st.integers(2, 48) if rough else st.integers(24, 48))
    task = draw(st.sampled_from(["classification"] * 3 + ["regression"]))
    label = draw(st.sampled_from(LABELS))
    if task == "regression":
        y_kind = draw(st.sampled_from(["float", "int"] + (["wild"] if rough else [])))
        y = draw(column(VALUES[y_kind][0], n, rough))
    else:
        y_kind, y = draw(labels(n, rough))
    columns = draw(st.sampled_from([{"id": ("int", list(range(n)))}] * 3 + [{}]))  # rows told apart, or not
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    taken = draw(st.sampled_from([[]] * 3 + [["split"]])) if rough else []  # a name the pipeline uses itself
    for name in names + taken:
        kind = draw(st.sampled_from(ROUGH if rough else PLAIN))
        columns[name] = (kind, draw(column(VALUES[kind][0], n, rough)))
        if kind == "beyond":
            columns[name][1][draw(st.integers(0, n - 1))] = draw(st.sampled_from([1e308, -1e39, 3.5e38]))
    text = draw(st.sampled_from([None, None, "notes"]))
    if text:
        columns[text] = ("text", draw(column(TEXT, n, rough)))
    columns[label] = (y_kind, y)
    return {"columns": columns, "label": label, "task": task, "text": text,
            "format": draw(st.sampled_from(["csv", "parquet", "jsonl"]))}


def write(src: dict, folder: Path) -> Path:
    """The table as a source file of its format: Parquet with its types, CSV as Arrow writes it, JSON lines
    as Python writes them (NaN and Infinity included: Arrow reads them; mixed columns as they are)."""
    path = folder / f"source.{src['format']}"
    if src["format"] == "jsonl":
        rows = [dict(zip(src["columns"], r)) for r in zip(*(v for _, v in src["columns"].values()))]
        path.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows))
        return path
    arrays = {}
    for name, (kind, values) in src["columns"].items():
        typ = pa.string() if kind == "text" else VALUES[kind][1]
        arrays[name] = pa.array([None if v is None else str(v) if typ == pa.string() else v for v in values], typ)
    table = pa.table(arrays)
    pq.write_table(table, path) if src["format"] == "parquet" else pacsv.write_csv(table, path)
    return path


def digests(root: Path) -> dict:
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(root.rglob("*")) if f.is_file() and "failed" not in f.name and "source." not in f.name}


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A folder holding a good snapshot, its clean table, transform, report and split files."""
    root = tmp_path_factory.mktemp("good")
    p = paths(root)
    ingest(Ingest(source=str(tiny_csv(root / "good.csv"))), tiny_contract(), p["raw"], p["manifest"], p["contract"])
    clean(Clean(split=Split(val_fraction=0.25, test_fraction=0.25)), p["raw"], p["manifest"], p["clean"],
          p["transform"], p["report"])
    augment(Augment(), p["clean"], p["transform"], p["splits"])
    (root / "good.csv").unlink()
    return root


CLEAN = st.builds(lambda seed, outliers, scaling, per_column, missing, category: Clean(
    split=Split(val_fraction=0.25, test_fraction=0.25, seed=seed), outliers=outliers, scaling=scaling,
    per_column=per_column, missing=missing, missing_category=category),
    st.integers(0, 3), st.sampled_from([None, (0.05, 0.95)]), st.sampled_from(["standard", "minmax"]),
    st.booleans(), st.sampled_from(["median", "mean", "mode", "constant", "drop"]),
    st.sampled_from(["constant", "mode", "drop"]))


@settings(derandomize=True, max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(src=sources(), clean_params=CLEAN, allow_non_finite=st.booleans())
def test_what_ingest_accepts_trains_and_what_it_refuses_changes_nothing(good, src, clean_params, allow_non_finite):
    with tempfile.TemporaryDirectory(prefix="gate-") as tmp:
        root = Path(tmp) / "repo"
        shutil.copytree(good, root)
        source, p = write(src, Path(tmp)), paths(root)
        params = Ingest(source=str(source), label_column=src["label"], task=src["task"], text_column=src["text"])
        before = digests(root)
        try:
            ingest(params, tiny_contract(allow_non_finite=allow_non_finite), p["raw"], p["manifest"], p["contract"],
                   clean=clean_params, warn=lambda line: None)
        except InputError as e:
            refused(str(e), source, root, before, set(src["columns"]))
            failed = failed_report_path(p["contract"])
            checks = sorted({v["check"] for v in json.loads(failed.read_text())["violations"]}) if failed.exists() \
                else ["read"]
            event(f"refused: {' '.join(checks)}")
            return
        event(f"accepted: {src['task']}, {src['format']}")
        event(f"accepted: {', '.join(sorted({k for k, _ in src['columns'].values()}))}")
        downstream(root, clean_params, regression=src["task"] == "regression")


def refused(msg: str, source: Path, root: Path, before: dict, names: set[str]) -> None:
    assert str(source) in msg, msg
    failed = failed_report_path(paths(root)["contract"])
    if failed.exists():  # the contract's refusal: every column it blames is named
        violations = json.loads(failed.read_text())["violations"]
        assert violations, msg
        for v in violations:
            assert v["column"] is None or f"column {v['column']!r}" in msg, (v, msg)
    else:  # the source could not be read as a table: the column, where one is to blame
        assert any(f"column {n!r}" in msg for n in names) or "line " in msg, msg
    assert digests(root) == before, msg


def downstream(root: Path, clean_params: Clean, regression: bool) -> None:
    """clean, augment, the train stage's checks and one step, evaluate: none may fail."""
    from safetensors.torch import save_file

    from tasks.data.tables import write_json
    from tasks.evaluate import evaluate
    from tasks.files import split_path

    p = paths(root)
    clean(clean_params, p["raw"], p["manifest"], p["clean"], p["transform"], p["report"])
    augment(Augment(), p["clean"], p["transform"], p["splits"])
    model, config, loss = train_step(root, regression)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(root / "model.safetensors"),
              metadata={"model": "mlp", "config": json.dumps(config)})
    metric = "val_mae" if regression else "val_accuracy"
    write_json(root / "history.json", [{"epoch": 1, "train_loss": loss, "val_loss": loss, metric: 0.5}])
    evaluate(Evaluate(), root / "model.safetensors", split_path(p["splits"], "test"), p["transform"],
             root / "history.json", root / "metrics.json", root / "confusion.json", root / "figures")


SHIPPED = load_params(ROOT / "params.yaml")


def train_step(root: Path, regression: bool) -> tuple[torch.nn.Module, dict, float]:
    """The train stage's precheck, then one step as a rank takes it: load_split, the model config, forward,
    backward (a tiny MLP, one process)."""
    from models import build
    from tasks.files import split_path
    from tasks.training.data import load_split
    from tasks.training.launch import precheck
    from tasks.training.loss import loss_fn
    from tasks.training.run import model_config, n_outputs

    p = paths(root)
    train = Train(model="mlp", mlp=MLP(hidden=(8,), dropout=0.0, norm="layer"), batch_size=1, num_procs=1,
                  loss="mse" if regression else "cross_entropy")
    where = SHIPPED.paths.model_copy(update={"transform": p["transform"], "splits": p["splits"],
                                             "checkpoints": root / "checkpoints"})
    precheck(SHIPPED.model_copy(update={"train": train, "paths": where}))
    x, y, schema = load_split(split_path(p["splits"], "train"))
    config = model_config(train, schema, x.shape[1], n_outputs(json.loads(p["transform"].read_text())))
    model = build("mlp", config)
    loss = loss_fn(model(x[:64]), y[:64], train)
    loss.backward()
    assert torch.isfinite(loss), loss
    return model, config, loss.item()
