"""Tiny in-memory data for the stage tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from tasks.clean import clean
from tasks.ingest import ingest
from tasks.params import Clean, Ingest, Split


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


@pytest.fixture
def staged(tmp_path):
    """ingest + clean of the tiny CSV; returns a dict of paths."""
    src = tiny_csv(tmp_path / "src.csv")
    p = {k: tmp_path / v for k, v in dict(raw="raw.parquet", manifest="manifest.json", clean="clean.parquet",
                                           transform="transform.json", report="report.json").items()}
    ingest(Ingest(source=str(src), image_shape=(2, 2)), p["raw"], p["manifest"])
    clean(Clean(split=Split(val_fraction=0.2, test_fraction=0.2, seed=1), per_column=False),
          p["raw"], p["manifest"], p["clean"], p["transform"], p["report"])
    return p


def table_of(**cols) -> pa.Table:
    return pa.table(cols)
