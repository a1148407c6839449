"""Evaluate's continual part: the model scored on the test set of every data version, and the matrix extended.

    rec = score(pred, y, test_rows, parent_record, experiences)   # this model's row, under the parent's rows
    write(folder, figures, rec)                                   # matrix.json, metrics.json, trend.json, PNGs

The test set of data version j is the test rows of the newest data whose
experience (clean's rows.parquet: the data version a row first appeared in,
along the parent lineage) is j; splits are stable under growth, so it is the
test split that version had (less any row the source has since dropped). Row i
of the matrix is the model trained after data version i: the earlier rows are
the parent's matrix as it was registered (the parent stage fetches it), and
this model's row is the last, replacing the parent's when no new data version
came. A data version none of whose test rows is in this data (another source,
as in a plain transfer) is left out of the matrix, and named.

    matrix.json   every row and cell, each experience's data version, rows and test-set hash (the gate and the
                  next child read it), and a registered parent's test metrics on this same test split (the
                  promotion policy compares the child with its parent on the same rows)
    metrics.json  average accuracy, backward transfer, average and largest forgetting (DVC metrics)
    trend.json    the average accuracy after each data version (a DVC plot)

The metrics are tasks/continual/metrics.py's (GEM's ACC and BWT; forgetting as
in Chaudhry et al.).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from tasks.continual.metrics import check_matrix, summary
from tasks.data.tables import write_json
from tasks.errors import InputError
from tasks.files import CONTINUAL_METRICS, MATRIX_FILE, TREND_FILE

MATRIX_PNG, TREND_PNG = "continual_matrix.png", "continual_trend.png"  # in paths.figures
THIS_MODEL = "this model"  # the newest row's name; a child's record names it by the parent's version


def test_set_id(hashes: np.ndarray) -> str:
    """The test set's identity: sha256 of its sorted row hashes (16 hex digits)."""
    return hashlib.sha256(np.sort(hashes.astype(np.uint64)).tobytes()).hexdigest()[:16]


def read_parent_record(path: Path) -> dict | None:
    """The parent's matrix.json, checked; None when the parent has none (from scratch, or registered before)."""
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text())
        check_matrix(as_full(rec["matrix"], len(rec["experiences"])))
        if len(rec["models"]) != len(rec["matrix"]):
            raise ValueError(f"{len(rec['models'])} model names for {len(rec['matrix'])} rows")
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{path}: the parent's accuracy matrix cannot be read ({type(e).__name__}: {e}); "
                         f"run `dvc repro parent`") from None
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    return rec


def as_full(matrix: list, columns: int) -> list:
    """An incomplete matrix (the last rows only: complete false) checked as the rows it is: the rows it lacks
    filled with placeholders, so row i stays the model after data version i."""
    if not 0 < len(matrix) <= columns:
        raise ValueError(f"{len(matrix)} rows for {columns} data versions")
    return [[0.0] * (i + 1) for i in range(columns - len(matrix))] + list(matrix)


def score(correct: np.ndarray, test_hashes: np.ndarray, test_experience: np.ndarray, experiences: list[dict],
          parent: dict | None, parent_name: str | None) -> dict:
    """The matrix record with this model's row: accuracy on each experience's test rows (`correct`, one bool
    per test row), under the parent's rows for the experiences before the newest one here. An ancestor's
    row the parent's record lacks leaves the matrix incomplete: its metrics are then the average accuracy
    alone."""
    cols = []
    for e in experiences:
        at = test_experience == e["experience"]
        if at.any():
            cols.append({"experience": e["experience"], "data_version": e["data_version"],
                         "test_rows": int(at.sum()), "test_set": test_set_id(test_hashes[at]),
                         "accuracy": float(correct[at].mean())})
    exps = [c["experience"] for c in cols]
    rows, models = [], []
    for k, e in enumerate(exps[:-1]):  # the models after each earlier data version, as the parent recorded them
        row = ancestor_row(parent, e, exps[:k + 1])
        if row is None:
            rows, models = [], []
            break
        rows.append(row + [None] * (len(exps) - k - 1))
        who = parent["models"][parent_row(parent, e)]
        models.append(parent_name if who == THIS_MODEL and parent_name else who)
    rows.append([c["accuracy"] for c in cols])
    models.append(THIS_MODEL)
    complete = len(rows) == len(cols)
    versions = [str(c["data_version"] or c["experience"]) for c in cols]
    return {"experiences": cols, "models": models, "matrix": rows, "complete": complete,
            "not_in_this_data": [e["experience"] for e in experiences if e["experience"] not in exps],
            "summary": summary(rows, versions) if complete else None}


def ancestor_row(parent: dict | None, after: int, exps: list[int]) -> list | None:
    """The parent's record of the model after experience `after`, on the test sets of `exps`; None if absent."""
    at = parent_row(parent, after)
    if at is None:
        return None
    index = [x["experience"] for x in parent["experiences"]]
    row = parent["matrix"][at]
    cells = [row[index.index(e)] if e in index and index.index(e) < len(row) else None for e in exps]
    return None if any(c is None for c in cells) else cells


def parent_row(parent: dict | None, after: int) -> int | None:
    """Which row of the parent's matrix is the model after experience `after`: an incomplete matrix holds the
    last rows only (the first row is then a later model than the first experience's)."""
    if parent is None:
        return None
    index = [x["experience"] for x in parent["experiences"]]
    at = index.index(after) - (len(index) - len(parent["matrix"])) if after in index else -1
    return at if at >= 0 else None


def evaluate_continual(pred: np.ndarray, y: np.ndarray, rows_path: Path, parent: Path, folder: Path,
                       figures: Path, parent_metrics: dict | None = None) -> dict:
    """Score the test predictions on each data version's test set (the test split's rows, in clean's order,
    are rows.parquet's test rows), extend the parent's matrix, and write it all; the headline metrics.
    `parent_metrics`: the parent's test metrics on this same test split, recorded for the promotion policy."""
    import pyarrow.compute as pc

    from tasks.data import inherit
    from tasks.data.tables import SPLITS

    rows = inherit.read_rows(rows_path)
    test = rows.filter(pc.equal(rows["split"], SPLITS.index("test")))
    if test.num_rows != len(y):
        raise InputError(f"{rows_path}: {test.num_rows} test rows, but the test split has {len(y)}; rerun clean "
                         f"and augment")
    record = inherit.read_record(parent) if (parent / inherit.RECORD).exists() else {"from": None}
    name = f"{record['artifact']}@{record['version']}" if record.get("artifact") else record.get("from")
    rec = score(pred == y, test["row"].to_numpy(), test["experience"].to_numpy(),
                inherit.experiences_of(rows, rows_path), read_parent_record(parent / inherit.FILES["continual"]),
                name)
    if parent_metrics is not None and record.get("artifact"):
        rec["parent_on_this_test_split"] = {"version": record["version"], "metrics": parent_metrics}
    return write(folder, figures, rec)


def continual_record(p) -> dict | None:
    """What register's lineage records (p: the Params): this model's accuracy on the test set of each data
    version, by data version, the matrix's metrics, the parent's figures on this test split and the buffer's
    hash; None for a regression or a run without a matrix."""
    from tasks.data.tables import read_json, sha256_file
    from tasks.files import BUFFER_TABLE

    path = p.paths.continual / MATRIX_FILE
    if not path.exists():
        return None
    rec = read_json(path, "the accuracy matrix over every data version's test set")
    if not rec.get("experiences"):
        return None
    buffer = p.paths.buffer / BUFFER_TABLE
    return {"test_sets": {str(c["data_version"] or c["experience"]): c["accuracy"] for c in rec["experiences"]},
            "strategy": p.continual.strategy, "summary": rec.get("summary"),
            "parent_on_this_test_split": rec.get("parent_on_this_test_split"),
            "buffer_sha256": sha256_file(buffer) if buffer.exists() else None}


def no_classes(folder: Path) -> None:
    """A regression: no accuracy per data version; the outputs DVC expects, saying so."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / MATRIX_FILE, {"experiences": [], "models": [], "matrix": [], "complete": False,
                                      "not_in_this_data": [], "summary": None, "task": "regression"})
    write_json(folder / CONTINUAL_METRICS, {})
    write_json(folder / TREND_FILE, [])


def headline(rec: dict) -> dict:
    s = rec["summary"] or {}
    forgetting = list((s.get("forgetting") or {}).values())
    last = rec["matrix"][-1]
    return {"average_accuracy": s.get("average_accuracy", float(np.mean(last))),
            "backward_transfer": s.get("backward_transfer"), "average_forgetting": s.get("average_forgetting"),
            "max_forgetting": max(forgetting) if forgetting else None, "data_versions": len(rec["experiences"])}


def trend(rec: dict) -> list[dict]:
    """The average accuracy of the model after each data version over the test sets it had seen."""
    offset = len(rec["experiences"]) - len(rec["matrix"])  # an incomplete matrix: the last row alone
    return [{"after": i + offset, "data_version": str(rec["experiences"][i + offset]["data_version"]),
             "average_accuracy": float(np.mean([c for c in row[:i + offset + 1] if c is not None]))}
            for i, row in enumerate(rec["matrix"])]


def write(folder: Path, figures: Path, rec: dict) -> dict:
    """matrix.json, metrics.json, trend.json, and the heat map and trend as PNG figures."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / MATRIX_FILE, rec)
    metrics = headline(rec)
    write_json(folder / CONTINUAL_METRICS, metrics)
    write_json(folder / TREND_FILE, trend(rec))
    plot(rec, figures)
    return metrics


def plot(rec: dict, figures: Path) -> None:
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    R = np.array([[np.nan if c is None else c for c in row] for row in rec["matrix"]], float)
    names = [str(c["data_version"] or c["experience"])[:8] for c in rec["experiences"]]
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * R.shape[1], 1.0 + 0.7 * R.shape[0]))
    ax.imshow(R, vmin=0, vmax=1, cmap="viridis")
    for (i, j), v in np.ndenumerate(R):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="white" if v < 0.6 else "black", fontsize=8)
    ax.set_xticks(range(R.shape[1]), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(R.shape[0]), [str(m)[:18] for m in rec["models"]], fontsize=7)
    ax.set(xlabel="test set of data version", ylabel="model after", title="Accuracy on every past test set")
    fig.tight_layout()
    fig.savefig(figures / MATRIX_PNG, dpi=110)
    plt.close(fig)
    points = trend(rec)
    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([p["after"] for p in points], [p["average_accuracy"] for p in points], marker="o")
    ax.set(xlabel="after data version", ylabel="average accuracy", ylim=(0, 1.02), title="Average accuracy")
    ax.set_xticks([p["after"] for p in points])
    fig.tight_layout()
    fig.savefig(figures / TREND_PNG, dpi=110)
    plt.close(fig)
