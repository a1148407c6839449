"""Tiny in-memory data for the stage tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tasks.clean import clean
from tasks.ingest import ingest
from tasks.params import Clean, Contract, Ingest, Split


def tiny_csv(path, rows=60, classes=3, header=True):
    """A CSV of `rows` 2x2 'images' with labels 0..classes-1, some gaps and repeats."""
    rng = np.random.default_rng(0)
    lines = ["a,b,c,d,label"] if header else []
    for i in range(rows):
        label = i % classes
        px = rng.integers(0, 16, 4) + label * 12
        lines.append(",".join(map(str, px)) + f",{label}")
    lines += [lines[-1], lines[-2]]  # two exact duplicates
    lines.append("1,2,,4,1")  # a missing feature value
    lines.append("1,2,3,4,")  # a missing label
    path.write_text("\n".join(lines) + "\n")
    return path


def tiny_contract(**keys) -> Contract:
    """The data contract for the tests' tiny tables, with `keys` set: params.yaml's thresholds (500 rows, 50 a
    class, a class ratio of 3, 10% missing) describe the digits, so these accept any well-formed table."""
    return Contract(**{"min_rows": 1, "max_null_ratio": 0.5, "min_class_rows": 1, "max_class_ratio": None} | keys)


@pytest.fixture
def staged(tmp_path):
    """ingest + clean of the tiny CSV; returns a dict of paths."""
    src = tiny_csv(tmp_path / "src.csv")
    p = paths(tmp_path)
    ingest(Ingest(source=str(src), image_shape=(2, 2)), tiny_contract(), p["raw"], p["manifest"], p["contract"])
    clean(Clean(split=Split(val_fraction=0.2, test_fraction=0.2, seed=1), per_column=False),
          p["raw"], p["manifest"], p["clean"], p["transform"], p["report"])
    return p


def paths(root) -> dict:
    """Where a stage test writes: raw, manifest, contract (report), clean, transform, report, splits."""
    names = dict(raw="raw.parquet", manifest="manifest.json", contract="contract.json", clean="clean.arrow",
                 transform="transform.json", report="report.json", splits="splits")
    return {k: root / v for k, v in names.items()}


def run_ingest(source, root, contract: Contract | None = None, **ingest_params) -> dict:
    """ingest `source` into `root` with default ingest params and tiny_contract() unless given; returns the
    manifest."""
    p = paths(root)
    return ingest(Ingest(source=str(source), **ingest_params), contract or tiny_contract(), p["raw"], p["manifest"],
                  p["contract"])


def run_clean(root, **clean_params) -> dict:
    p = paths(root)
    return clean(Clean(**clean_params), p["raw"], p["manifest"], p["clean"], p["transform"], p["report"])


def table_of(**cols) -> pa.Table:
    return pa.table(cols)
