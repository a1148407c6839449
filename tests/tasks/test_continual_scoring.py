"""evaluate's continual part: each data version's test set scored, the parent's matrix extended by this model's
row, its metrics, trend and figures written; what a parent does not record leaves the matrix incomplete, named.

    python -m pytest tests/tasks/test_continual_scoring.py      # a few seconds

A lineage is simulated: the model after data version i is "scored" by a draw of which of its test rows it got
right, and each record is written and read back as the next child's parent (as the parent stage fetches it).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.continual import scoring
from tasks.continual.metrics import summary
from tasks.data import inherit
from tasks.errors import InputError
from tasks.files import CONTINUAL_METRICS, MATRIX_FILE, TREND_FILE

PROPERTY = settings(deadline=None, derandomize=True, max_examples=60)
NAMES = ["digits@v0.0.1", "digits@v0.0.2", "digits@v0.0.3"]


def listed(n: int) -> list[dict]:
    return [{"experience": e, "data_version": f"d{e}"} for e in range(n)]


def scored_rows(sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Test row hashes (distinct) and each one's experience: sizes[e] rows of experience e."""
    exp = np.repeat(np.arange(len(sizes)), sizes).astype(np.int16)
    return np.arange(1, len(exp) + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15), exp


def reread(rec: dict, folder) -> dict | None:
    """The record as the next child's parent stage fetches it: matrix.json, as continual.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / inherit.FILES["continual"]).write_text(json.dumps(rec))
    return scoring.read_parent_record(folder / inherit.FILES["continual"])


sizes_st = st.lists(st.integers(1, 12), min_size=3, max_size=3)


@PROPERTY
@given(sizes=sizes_st, data=st.data())
def test_a_record_extended_over_three_data_versions_is_the_matrix_by_hand(tmp_path_factory, sizes, data):
    """Model i sees the test sets of versions 0..i; R[i][j] is its accuracy on version j's rows. The record
    after version 2 holds every row, the ancestors' named by their versions (the parent's own "this model"
    renamed to the parent's name), cells above the diagonal None, and its summary is metrics.summary of R."""
    folder = tmp_path_factory.mktemp("lineage")
    R, parent = [], None
    for i in range(3):
        hashes, exp = scored_rows(sizes[:i + 1])
        correct = np.array(data.draw(st.lists(st.booleans(), min_size=len(exp), max_size=len(exp))), bool)
        R.append([float(correct[exp == j].mean()) for j in range(i + 1)])
        rec = scoring.score(correct, hashes, exp, listed(i + 1), parent, NAMES[i - 1] if i else None)
        parent = reread(rec, folder / str(i))
    assert rec["matrix"] == [R[0] + [None, None], R[1] + [None], R[2]]
    assert rec["models"] == NAMES[:2] + [scoring.THIS_MODEL] and rec["complete"] is True
    assert rec["summary"] == summary(R, ["d0", "d1", "d2"]) and rec["not_in_this_data"] == []
    hashes, exp = scored_rows(sizes)
    assert [c["test_rows"] for c in rec["experiences"]] == sizes
    assert [c["test_set"] for c in rec["experiences"]] == [scoring.test_set_id(hashes[exp == j]) for j in range(3)]
    assert scoring.test_set_id(hashes[::-1]) == scoring.test_set_id(hashes)  # the set, not the order


def test_without_a_new_data_version_this_models_row_replaces_the_parents():
    hashes, exp = scored_rows([4, 4])
    first = scoring.score(np.ones(8, bool), hashes, exp, listed(2), None, None)
    parent = dict(first, matrix=[[1.0, None], [0.5, 0.75]], models=["digits@v0.0.1", scoring.THIS_MODEL],
                  complete=True)
    correct = np.array([1, 1, 1, 0, 1, 1, 0, 0], bool)
    rec = scoring.score(correct, hashes, exp, listed(2), parent, "digits@v0.0.2")
    assert rec["matrix"] == [[1.0, None], [0.75, 0.5]] and rec["models"] == ["digits@v0.0.1", scoring.THIS_MODEL]


def test_a_data_version_without_test_rows_here_is_left_out_and_named():
    """Version 1's rows are not in this data (another source's): its column is left out, the others kept."""
    hashes, exp = scored_rows([5, 0, 3])
    parent = {"experiences": listed(2), "models": ["digits@v0.0.1", scoring.THIS_MODEL],
              "matrix": [[0.8, None], [0.6, 0.9]], "complete": True}
    correct = np.array([1, 1, 1, 1, 0, 1, 0, 0], bool)
    rec = scoring.score(correct, hashes, exp, listed(3), parent, "digits@v0.0.2")
    assert [c["experience"] for c in rec["experiences"]] == [0, 2] and rec["not_in_this_data"] == [1]
    assert rec["matrix"] == [[0.8, None], [0.8, 1 / 3]] and rec["models"] == ["digits@v0.0.1", scoring.THIS_MODEL]
    assert rec["summary"] == summary(rec["matrix"], ["d0", "d2"])


def test_a_parent_without_a_matrix_gives_the_last_row_only_and_its_child_reads_that(tmp_path):
    """A parent registered before matrices were kept: this model's row alone, complete false, no forgetting. Its
    child (of the same data, or of more) reads the incomplete record, and never takes its row, the model after
    version 1, for the model after version 0."""
    hashes, exp = scored_rows([4, 4])
    correct = np.array([1, 1, 0, 0, 1, 1, 1, 0], bool)
    rec = scoring.score(correct, hashes, exp, listed(2), None, "old@v0.0.1")
    assert rec["matrix"] == [[0.5, 0.75]] and rec["models"] == [scoring.THIS_MODEL]
    assert rec["complete"] is False and rec["summary"] is None
    metrics = scoring.write(tmp_path / "c", tmp_path / "fig", rec)
    assert metrics == {"average_accuracy": 0.625, "backward_transfer": None, "average_forgetting": None,
                       "max_forgetting": None, "data_versions": 2}
    assert json.loads((tmp_path / "c" / TREND_FILE).read_text()) == [
        {"after": 1, "data_version": "d1", "average_accuracy": 0.625}]
    parent = reread(rec, tmp_path / "parent")
    same = scoring.score(np.ones(8, bool), hashes, exp, listed(2), parent, "digits@v0.0.1")
    assert same["matrix"] == [[1.0, 1.0]] and same["complete"] is False
    hashes, exp = scored_rows([4, 4, 2])
    more = scoring.score(np.ones(10, bool), hashes, exp, listed(3), parent, "digits@v0.0.1")
    assert more["matrix"] == [[1.0, 1.0, 1.0]] and more["complete"] is False


def test_an_unreadable_parent_matrix_is_named(tmp_path):
    path = tmp_path / inherit.FILES["continual"]
    for text in ("{", json.dumps({"matrix": [[1.5]], "experiences": listed(1), "models": ["m"]}),
                 json.dumps({"matrix": [[0.5]]})):
        path.write_text(text)
        with pytest.raises(InputError, match=rf"{path}: .*(cannot be read|outside \[0, 1\])"):
            scoring.read_parent_record(path)
    assert scoring.read_parent_record(tmp_path / "none.json") is None


def test_evaluate_writes_the_matrix_its_metrics_trend_and_figures(tmp_path):
    """The stage's own path: rows.parquet's test rows, the parent folder (parent.json names it), the files."""
    sizes = [6, 5, 4]
    hashes, exp = scored_rows(sizes)
    split = np.full(len(hashes), 2, np.int8)
    train = np.arange(1000, 1010, dtype=np.uint64)  # training rows around them: only the test rows are scored
    inherit.write_rows(tmp_path / "rows.parquet", np.concatenate([train, hashes]),
                       np.concatenate([np.zeros(10, np.int8), split]),
                       np.concatenate([np.zeros(10, np.int16), exp]), listed(3))
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / inherit.RECORD).write_text(json.dumps({"from": "digits@prod", "artifact": "digits",
                                                     "version": "v0.0.2", "commit": "ab12cd",
                                                     "weights": {"sha256": "00" * 32}}))
    R0 = [[0.5, None], [0.25, 0.75]]
    (parent / inherit.FILES["continual"]).write_text(json.dumps(
        {"experiences": listed(2), "models": ["digits@v0.0.1", scoring.THIS_MODEL], "matrix": R0, "complete": True}))
    y = np.arange(len(hashes)) % 3
    pred = np.where(np.arange(len(hashes)) % 2 == 0, y, (y + 1) % 3)  # every other row right
    metrics = scoring.evaluate_continual(pred, y, tmp_path / "rows.parquet", parent, tmp_path / "c", tmp_path / "f")
    rec = json.loads((tmp_path / "c" / MATRIX_FILE).read_text())
    right = pred == y
    last = [float(right[exp == j].mean()) for j in range(3)]
    assert rec["matrix"] == [[0.5, None, None], [0.25, 0.75, None], last]
    assert rec["models"] == ["digits@v0.0.1", "digits@v0.0.2", scoring.THIS_MODEL]
    s = summary([[0.5], [0.25, 0.75], last], ["d0", "d1", "d2"])
    assert metrics == json.loads((tmp_path / "c" / CONTINUAL_METRICS).read_text()) == {
        "average_accuracy": s["average_accuracy"], "backward_transfer": s["backward_transfer"],
        "average_forgetting": s["average_forgetting"], "max_forgetting": max(s["forgetting"].values()),
        "data_versions": 3}
    assert json.loads((tmp_path / "c" / TREND_FILE).read_text()) == [
        {"after": i, "data_version": f"d{i}", "average_accuracy": float(np.mean(row[:i + 1]))}
        for i, row in enumerate(rec["matrix"])]
    assert all((tmp_path / "f" / png).stat().st_size > 0 for png in (scoring.MATRIX_PNG, scoring.TREND_PNG))
    with pytest.raises(InputError, match="15 test rows, but the test split has 14; rerun clean and augment"):
        scoring.evaluate_continual(pred[1:], y[1:], tmp_path / "rows.parquet", parent, tmp_path / "c", tmp_path / "f")
