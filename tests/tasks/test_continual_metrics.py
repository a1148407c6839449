"""The continual-learning metrics equal the standard definitions, computed independently; bad matrices are refused.

    python -m pytest tests/tasks/test_continual_metrics.py      # a few seconds

The independent implementation below is written from the papers' 1-based formulas (GEM's R_{T,i};
Chaudhry et al.'s a_{l,j}) as plain loops over an explicit list of (i, j) cells, with no numpy; the worked
examples are computed by hand in the comments. Hypothesis draws random valid matrices (triangles and squares,
1 to 6 data versions) and random single faults in them.
"""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.continual.metrics import (
    average_accuracy,
    backward_transfer,
    check_matrix,
    forgetting,
    forgetting_refusals,
    summary,
)
from tasks.errors import InputError

PROPERTY = settings(deadline=None, derandomize=True, max_examples=200)


def reference(R: list[list[float | None]]) -> dict:
    """ACC, BWT, f_j and F from the papers' formulas, 1-based: a(l, j) is the model after version l on test set j."""
    T = len(R)
    cells = {(i + 1, j + 1): R[i][j] for i in range(T) for j in range(i + 1)}  # the lower triangle, 1-based

    def a(m: int, j: int) -> float:  # Chaudhry et al.'s a_{l,j}, with the model's index m for l
        return cells[(m, j)]

    acc = 0.0
    for i in range(1, T + 1):
        acc += a(T, i)
    acc /= T
    if T == 1:
        return {"acc": acc, "bwt": None, "f": [], "F": None}
    bwt = 0.0
    for i in range(1, T):
        bwt += a(T, i) - a(i, i)
    bwt /= T - 1
    f = []
    for j in range(1, T):
        earlier = [a(m, j) for (m, jj) in cells if jj == j and m < T]  # every model from j to T-1 (1-based)
        best = earlier[0]
        for x in earlier:
            if x > best:
                best = x
        f.append(best - a(T, j))
    return {"acc": acc, "bwt": bwt, "f": f, "F": sum(f) / len(f)}


# --- worked examples, by hand -------------------------------------------------------------------------------

def test_the_docstring_example_by_hand():
    R = [[0.98],
         [0.99, 0.97],          # version 1 helped test set 0: its best is 0.99, not R[0][0]
         [0.64, 0.80, 0.96]]
    s = summary(R, ["a1", "b2", "c3"])
    assert s["versions"] == 3
    assert s["average_accuracy"] == pytest.approx((0.64 + 0.80 + 0.96) / 3) == pytest.approx(0.80)
    assert s["backward_transfer"] == pytest.approx(((0.64 - 0.98) + (0.80 - 0.97)) / 2) == pytest.approx(-0.255)
    assert s["forgetting"] == pytest.approx({"a1": 0.99 - 0.64, "b2": 0.97 - 0.80})  # 0.35, 0.17
    assert s["average_forgetting"] == pytest.approx(0.26)
    # Avalanche's standalone Forgetting (first value minus last) would say 0.98 - 0.64 = 0.34 for a1: the drop
    # from the best earlier accuracy is the other definition, and the one this module computes.
    assert forgetting(R)[0] != pytest.approx(0.98 - 0.64)


def test_naive_fine_tuning_collapse_by_hand():
    """Class-incremental, five experiences, each model perfect on its own classes and blind to the earlier
    ones: ACC 1/5, BWT -1, every past test set forgotten entirely (the issue's expected collapse)."""
    R = [[1.0 if j == i else 0.0 for j in range(i + 1)] for i in range(5)]
    assert average_accuracy(R) == pytest.approx(0.2)
    assert backward_transfer(R) == pytest.approx(-1.0)
    assert forgetting(R) == pytest.approx([1.0, 1.0, 1.0, 1.0])


def test_positive_backward_transfer_by_hand():
    """The last model beats every earlier one on test set 0: negative forgetting, positive BWT."""
    R = [[0.5, None, None],
         [0.6, 0.9, None],      # a square matrix, the upper cells not scored
         [0.7, 0.8, 0.9]]
    assert average_accuracy(R) == pytest.approx(0.8)
    assert backward_transfer(R) == pytest.approx(((0.7 - 0.5) + (0.8 - 0.9)) / 2)  # 0.05
    assert forgetting(R) == pytest.approx([0.6 - 0.7, 0.9 - 0.8])  # -0.1, 0.1


def test_cells_above_the_diagonal_change_nothing():
    low = [[0.9], [0.4, 0.8]]
    square = [[0.9, 0.99], [0.4, 0.8]]  # a model scored on a version it has not seen: not the best to forget
    assert summary(low) == summary(square)


def test_one_version_has_no_past():
    assert summary([[0.7]]) == {"versions": 1, "average_accuracy": 0.7, "backward_transfer": None,
                                "forgetting": {}, "average_forgetting": None}


def test_every_bad_cell_is_named_at_once():
    R = [[0.5, float("nan")], [float("inf"), None, 0.3], [-0.1]]
    with pytest.raises(InputError) as e:
        check_matrix(R, ["v1", "v2", "v3"])
    msg = str(e.value)
    assert "row 0 (after data version v1), column 1 (test set of data version v2) is NaN" in msg
    assert "row 1 (after data version v2), column 0 (test set of data version v1) is inf, outside [0, 1]" in msg
    assert "row 1 (after data version v2), column 1 (test set of data version v2) is missing (None)" in msg
    assert "row 2 (after data version v3) has 1 cell(s): expected 3" in msg
    assert "row 2 (after data version v3), column 0 (test set of data version v1) is -0.1, outside" in msg


@pytest.mark.parametrize("R, expected", [
    ([], "expected a list of rows"),
    ("0.5", "expected a list of rows"),
    ([[0.5], 0.5], "row 1 is 0.5: expected a list of accuracies"),
    ([[True]], "row 0, column 0 is True, not a number"),
    ([["0.5"]], "row 0, column 0 is '0.5', not a number"),
    ([[50.0]], "row 0, column 0 is 50.0, outside [0, 1]"),  # a percentage, not a fraction
])
def test_not_a_matrix_of_accuracies(R, expected):
    with pytest.raises(InputError, match=re.escape(expected)):
        check_matrix(R)


def test_versions_must_name_each_row_once():
    with pytest.raises(InputError, match="expected 2 distinct names"):
        summary([[0.5], [0.5, 0.5]], ["a", "a"])
    with pytest.raises(InputError, match="expected 2 distinct names"):
        summary([[0.5], [0.5, 0.5]], ["a"])


def test_the_input_is_left_as_it_was():
    R = [[0.9, None], [0.4, 0.8]]
    summary(R, ["a", "b"])
    assert R == [[0.9, None], [0.4, 0.8]]


# --- the gate ------------------------------------------------------------------------------------------------

def test_the_gate_names_each_test_set_that_lost_too_much():
    holder = {"a1": 0.97, "b2": 0.96, "c3": 0.95}
    candidate = {"a1": 0.90, "b2": 0.93, "c3": 0.99, "d4": 0.98}  # d4 is new: nothing to compare
    assert forgetting_refusals(candidate, holder, 5, "digits@v0.0.3") == [
        "accuracy on the test set of data version a1 0.9000 is 7.00 points below digits@v0.0.3's 0.9700, "
        "more than the allowed 5"]
    assert forgetting_refusals(candidate, holder, 2, "digits@v0.0.3") == [
        "accuracy on the test set of data version a1 0.9000 is 7.00 points below digits@v0.0.3's 0.9700, "
        "more than the allowed 2",
        "accuracy on the test set of data version b2 0.9300 is 3.00 points below digits@v0.0.3's 0.9600, "
        "more than the allowed 2"]
    assert forgetting_refusals(candidate, holder, 7) == []


def test_the_gate_at_the_limit():
    # 0.93 - 0.88 is 5.000000000000004 points in floats (0.95 - 0.90 is 4.999999999999993): the allowed 5, not more
    assert (0.93 - 0.88) * 100 > 5
    assert forgetting_refusals({"a": 0.88, "b": 0.90}, {"a": 0.93, "b": 0.95}, 5) == []
    refused = forgetting_refusals({"a": 0.89996}, {"a": 0.95}, 5, "h")
    assert refused == ["accuracy on the test set of data version a 0.9000 is 5.0040 points below h's 0.9500, "
                       "more than the allowed 5"]  # enough digits that the figure shown is more than 5


def test_the_gate_refuses_a_past_test_set_not_scored():
    assert forgetting_refusals({"b": 0.9}, {"a": 0.8, "b": 0.9}, 5, "digits@v0.0.1") == [
        "the candidate was not scored on the test set of data version a (digits@v0.0.1 has 0.8000 on it): "
        "every past test set must be scored"]


@pytest.mark.parametrize("candidate, holder, allowed, expected", [
    ({"a": math.nan}, {"a": 0.9}, 5, "candidate's accuracy on the test set of data version a is NaN"),
    ({"a": 0.9}, {"a": 90}, 5, "h's accuracy on the test set of data version a is 90.0, outside [0, 1]"),
    ({"a": 0.9}, {"a": 0.9}, -1, "allowed forgetting -1: expected a number of points >= 0"),
    ({"a": 0.9}, {"a": 0.9}, math.inf, "allowed forgetting inf"),
    ([0.9], {"a": 0.9}, 5, "candidate's accuracies [0.9]: expected a mapping"),
])
def test_the_gate_refuses_bad_input(candidate, holder, allowed, expected):
    with pytest.raises(InputError, match=re.escape(expected)):
        forgetting_refusals(candidate, holder, allowed, "h")


# --- properties ----------------------------------------------------------------------------------------------

ACCURACY = st.floats(0.0, 1.0)
BAD = st.sampled_from([math.nan, math.inf, -math.inf, None, "0.5", True]) | st.floats(1.0, 1e9, exclude_min=True) \
    | st.floats(-1e9, 0.0, exclude_max=True)


@st.composite
def matrices(draw, fewest: int = 1):
    """A valid accuracy matrix: a lower triangle, or a square one whose upper cells are None or accuracies."""
    T = draw(st.integers(fewest, 6))
    square = draw(st.booleans())
    upper = st.none() | ACCURACY
    return [[draw(ACCURACY) for _ in range(i + 1)] + ([draw(upper) for _ in range(i + 1, T)] if square else [])
            for i in range(T)]


def names(T: int, named: bool) -> list[str] | None:
    return [f"v{j}" for j in range(T)] if named else None


@PROPERTY
@given(matrices())
def test_metrics_equal_the_independent_implementation(R):
    s, ref = summary(R), reference(R)
    T = len(R)
    assert 0.0 <= s["average_accuracy"] <= 1.0
    assert s["average_accuracy"] == pytest.approx(ref["acc"], abs=1e-12)
    assert len(s["forgetting"]) == T - 1
    if T == 1:
        assert s["backward_transfer"] is None and s["average_forgetting"] is None
        return
    assert -1.0 <= s["backward_transfer"] <= 1.0
    assert s["backward_transfer"] == pytest.approx(ref["bwt"], abs=1e-12)
    f = list(s["forgetting"].values())
    assert f == pytest.approx(ref["f"], abs=1e-12)
    assert all(-1.0 <= x <= 1.0 for x in f)
    assert s["average_forgetting"] == pytest.approx(ref["F"], abs=1e-12)
    for j, x in enumerate(f):  # the best earlier accuracy is at least the one just after training on j
        assert x >= R[j][j] - R[T - 1][j] - 1e-12
    assert s["average_forgetting"] >= -s["backward_transfer"] - 1e-12


@PROPERTY
@given(st.lists(ACCURACY, min_size=1, max_size=6))
def test_a_matrix_that_never_changes_forgets_nothing(columns):
    """Each test set scores the same under every model that has seen it: BWT 0, forgetting 0, ACC their mean."""
    R = [columns[: i + 1] for i in range(len(columns))]
    s = summary(R)
    assert s["average_accuracy"] == pytest.approx(sum(columns) / len(columns))
    if len(columns) > 1:
        assert s["backward_transfer"] == 0.0
        assert s["average_forgetting"] == 0.0
    assert all(x == 0.0 for x in s["forgetting"].values())


@PROPERTY
@given(matrices(), st.data(), st.booleans())
def test_a_bad_cell_is_always_refused_and_named(R, data, named):
    T = len(R)
    i = data.draw(st.integers(0, T - 1))
    j = data.draw(st.integers(0, len(R[i]) - 1))
    bad = data.draw(BAD)
    if bad is None and j > i:
        bad = math.nan  # None above the diagonal is a cell not scored, which is allowed
    R[i][j] = bad
    with pytest.raises(InputError) as e:
        summary(R, names(T, named))
    row = f"row {i} (after data version v{i})" if named else f"row {i}"
    col = f"column {j} (test set of data version v{j})" if named else f"column {j}"
    assert f"{row}, {col} is " in str(e.value)


@PROPERTY
@given(matrices(fewest=2), st.data(), st.booleans())
def test_a_row_of_the_wrong_length_is_always_refused_and_named(R, data, named):
    T = len(R)
    i = data.draw(st.integers(0, T - 1))
    if data.draw(st.booleans()) or i == 0:
        R[i] = R[i] + [0.5] * (T + 1 - len(R[i]))   # one more cell than there are data versions
    else:
        R[i] = R[i][: data.draw(st.integers(0, i))]  # short of its own test set
    with pytest.raises(InputError) as e:
        summary(R, names(T, named))
    row = f"row {i} (after data version v{i})" if named else f"row {i}"
    assert f"{row} has {len(R[i])} cell(s): expected " in str(e.value)


@PROPERTY
@given(st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), st.tuples(ACCURACY, ACCURACY), min_size=1),
       st.floats(0, 100))
def test_the_gate_refuses_exactly_the_test_sets_that_lost_more_than_allowed(scores, allowed):
    holder = {v: h for v, (h, _) in scores.items()}
    candidate = {v: c for v, (_, c) in scores.items()}
    refused = forgetting_refusals(candidate, holder, allowed, "h")
    lost = [v for v in holder if (holder[v] - candidate[v]) * 100 > allowed + 1e-9]
    assert len(refused) == len(lost)
    for v, text in zip(lost, refused):
        assert text.startswith(f"accuracy on the test set of data version {v} {candidate[v]:.4f} is ")
        assert f"below h's {holder[v]:.4f}, more than the allowed {allowed:g}" in text
        shown = float(re.search(r" is ([0-9.e+-]+) points below", text).group(1))
        assert shown > allowed
    assert forgetting_refusals(holder, holder, allowed, "h") == []
