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


CONTINUAL_CLASSES = (0, 1, 2, 3)  # clean.classes: one output layer for both data versions (train.init.head keep)


def continual_version(root, labels, parent=None, size: int = 40, seed: int = 0) -> dict:
    """ingest (the digits, ingest.labels `labels`) + clean (clean.classes CONTINUAL_CLASSES) + buffer into
    `root`, from the parent folder `parent` as the parent stage fills it (or from scratch); returns the paths and
    each stage's summary."""
    from tasks.buffer import build_buffer
    from tasks.params import Buffer, load_params
    from tests.conftest import ROOT

    p = load_params(ROOT / "params.yaml")
    root.mkdir(parents=True, exist_ok=True)
    out = paths(root) | {"rows": root / "rows.parquet", "buffer": root / "buffer", "parent": parent}
    out["manifest_record"] = ingest(p.ingest.model_copy(update={"labels": list(labels)}), tiny_contract(),
                                    out["raw"], out["manifest"], out["contract"])
    out["clean_report"] = clean(p.clean.model_copy(update={"classes": CONTINUAL_CLASSES}), out["raw"],
                                out["manifest"], out["clean"], out["transform"], out["report"], out["rows"], parent)
    out["buffer_record"] = build_buffer(Buffer(size=size, seed=seed), out["clean"], out["rows"], out["transform"],
                                        parent if parent is not None else root / "no-parent", out["buffer"])
    return out


def as_parent(version: dict, folder) -> dict:
    """`folder` holding a version's rows.parquet, transform.json and buffer.parquet under the names the parent
    stage fetches them by (tasks.data.inherit.FILES)."""
    import shutil

    from tasks.data.inherit import FILES

    folder.mkdir(parents=True, exist_ok=True)
    for what, src in (("rows", version["rows"]), ("transform", version["transform"]),
                      ("buffer", version["buffer"] / "buffer.parquet")):
        shutil.copy(src, folder / FILES[what])
    return {"folder": folder}


@pytest.fixture(scope="session")
def continual_lineage(tmp_path_factory):
    """Two data versions of the digits: v0 holds the labels 0 and 1 (from scratch), v1 the labels 0-3, cleaned
    and buffered from v0 as its parent. Shared by the session: read it, never write into it."""
    root = tmp_path_factory.mktemp("continual")
    v0 = continual_version(root / "v0", [0, 1])
    as_parent(v0, root / "parent")
    v1 = continual_version(root / "v1", [0, 1, 2, 3], root / "parent")
    return {"v0": v0, "v1": v1, "parent": root / "parent", "root": root}
