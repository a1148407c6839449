"""The standard continual-learning metrics of an accuracy matrix, and the promotion gate's forgetting check.

    from tasks.continual.metrics import summary, forgetting_refusals
    R = [[0.98],                 # R[i][j]: the model after data version i on the test set of version j
         [0.99, 0.97],
         [0.64, 0.80, 0.96]]
    summary(R, ["a1", "b2", "c3"])
    # {"versions": 3, "average_accuracy": 0.80, "backward_transfer": -0.255,
    #  "forgetting": {"a1": 0.35, "b2": 0.17}, "average_forgetting": 0.26}      (up to float rounding)
    forgetting_refusals({"a1": 0.90, "b2": 0.97}, {"a1": 0.97, "b2": 0.96}, 5, "digits@v0.0.3")
    # ["accuracy on the test set of data version a1 0.9000 is 7.00 points below digits@v0.0.3's 0.9700,
    #   more than the allowed 5"]

**The matrix.** T data versions in order (0 the first); row i is the model trained after data version i,
column j the test set of data version j (splits are stable under growth, so it stays a test set). Row i needs
its cells j <= i: its own test set and every earlier one (a lower triangle, diagonal included). It may also
hold cells j > i, up to T in all (a square matrix): those are a model scored on a version it has not seen;
no metric here reads them, and each is None (not scored) or an accuracy. Every cell present is an accuracy:
a real number in [0, 1] (a fraction, not a percentage); None only above the diagonal; NaN, inf, a bool or
text nowhere. Anything else is an InputError that names every bad cell by row and column (and by data
version, when the versions are named), at once.

**The metrics** (T the number of versions, the last row the model now):

    ACC  = 1/T     * sum_{j=0}^{T-1} R[T-1][j]                    average accuracy (GEM)
    BWT  = 1/(T-1) * sum_{j=0}^{T-2} (R[T-1][j] - R[j][j])          backward transfer (GEM); < 0 is forgetting
    f_j  = max_{j <= i <= T-2} R[i][j] - R[T-1][j],   j <= T-2      forgetting of test set j (Chaudhry et al.)
    F    = 1/(T-1) * sum_{j=0}^{T-2} f_j                            average forgetting (Chaudhry et al.)

ACC and BWT are from Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning" (NeurIPS 2017),
section 5 (their 1-based R_{T,i} is R[T-1][i-1] here). Forgetting is from Chaudhry, Dokania, Ajanthan & Torr,
"Riemannian Walk for Incremental Learning: Understanding Forgetting and Intransigence" (ECCV 2018): the drop
from the best earlier accuracy on that test set, f_j^k = max_{l in 1..k-1} a_{l,j} - a_{k,j}. Their max runs
over every earlier model; here it starts at the model after version j, the first one that trained on it
(above the diagonal is a model scored on data it never saw, which in the class-incremental case scores about
0 and cannot be the max anyway). So f_j >= R[j][j] - R[T-1][j], and F >= -BWT; f_j < 0 only when the model
now beats every earlier one on test set j. With one version there is no past test set: BWT and F are None
(not 0, which would read as "nothing forgotten") and the forgetting is {}.

**The gate** (forgetting_refusals): the candidate and the holder of the stage, each scored on the test set of
every data version (by name); one refusal, worded like tasks.registry.policy.decide's, for each of the
holder's test sets on which the candidate scores more than the allowed points (percentage points: 5 means
0.05 of accuracy) below the holder, and for each the candidate was not scored on. A test set only the
candidate has (the new data version) is not compared: the holder had nothing there to lose.

Why written here: the field's library, Avalanche (`avalanche-lib` 0.6.0 on PyPI, installable here), keeps
these metrics as plugins fed by its own training and evaluation loop, not as functions of a matrix; importing
any of them imports the whole package (torchvision, wandb, tensorboard, gdown, qpsolvers, pytorchcv), and its
standalone `Forgetting` is the first recorded value minus the last (R[j][j] - R[T-1][j], the negative of
GEM's per-version BWT), not the drop from the best. These are four lines of numpy each; the tests check them
against an independent implementation and hand-computed examples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np

from tasks.errors import InputError

SHOWN = 10  # problems listed in one InputError before "... (N in all)"
EPS_POINTS = 1e-9  # float noise: 0.93 - 0.88 is 5.000000000000004 points, not more than 5


def _accuracy_problem(x: object) -> str | None:
    """Why `x` is not an accuracy (a real number in [0, 1]), or None when it is one."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, Real):
        return f"is {x!r}, not a number"
    if math.isnan(x):
        return "is NaN"
    if not 0.0 <= float(x) <= 1.0:
        return f"is {float(x)!r}, outside [0, 1]"
    return None


def _is_rows(x: object) -> bool:
    return isinstance(x, (Sequence, np.ndarray)) and not isinstance(x, (str, bytes))


def _raise(problems: list[str]) -> None:
    if problems:
        more = f"; ... ({len(problems)} problems in all)" if len(problems) > SHOWN else ""
        raise InputError("the accuracy matrix (R[i][j]: the model after data version i on the test set of data "
                         f"version j) is not valid: {'; '.join(problems[:SHOWN])}{more}")


def check_matrix(R: Sequence[Sequence[float | None]], versions: Sequence[str] | None = None) -> np.ndarray:
    """R checked (module docstring) as a T x T float array; NaN marks an unscored cell above the diagonal."""
    if not _is_rows(R) or len(R) == 0:
        _raise([f"expected a list of rows, one per data version (at least one), got {R!r}"[:200]])
    T = len(R)
    if versions is not None:
        versions = [str(v) for v in versions]
        if len(versions) != T or len(set(versions)) != T:
            _raise([f"{T} row(s) but data versions {versions}: expected {T} distinct names, in order"])
    after = (lambda i: f" (after data version {versions[i]})") if versions else (lambda i: "")
    on = (lambda j: f" (test set of data version {versions[j]})") if versions else (lambda j: "")
    problems, out = [], np.full((T, T), np.nan)
    for i, row in enumerate(R):
        if not _is_rows(row):
            problems.append(f"row {i}{after(i)} is {row!r}: expected a list of accuracies, one per test set")
            continue
        if not i + 1 <= len(row) <= T:
            wanted = f"{T}" if i + 1 == T else f"{i + 1} to {T}"
            problems.append(f"row {i}{after(i)} has {len(row)} cell(s): expected {wanted}, one for its own test set "
                            f"and each earlier one (columns 0..{i}), then optionally the later ones")
        for j, x in enumerate(row[:T]):
            if x is None and j > i:
                continue  # not scored: a model on a data version it has not seen
            why = "is missing (None), and the metrics need it" if x is None else _accuracy_problem(x)
            if why:
                problems.append(f"row {i}{after(i)}, column {j}{on(j)} {why}: expected an accuracy in [0, 1]")
            else:
                out[i, j] = float(x)
    _raise(problems)
    return out


def average_accuracy(R: Sequence[Sequence[float | None]]) -> float:
    """GEM's ACC: the model now (the last row) averaged over the test sets of every data version."""
    r = check_matrix(R)
    return float(r[-1].mean())


def backward_transfer(R: Sequence[Sequence[float | None]]) -> float | None:
    """GEM's BWT: how the model now scores on each past test set against the model just after it; None for T=1."""
    r = check_matrix(R)
    T = len(r)
    if T == 1:
        return None
    return float((r[-1, : T - 1] - np.diag(r)[: T - 1]).mean())


def forgetting(R: Sequence[Sequence[float | None]]) -> list[float]:
    """f_j for each past test set j < T-1: the best accuracy on it of the models from j to T-2, minus the last's."""
    r = check_matrix(R)
    T = len(r)
    if T == 1:
        return []
    below = np.tril(np.ones((T - 1, T - 1), dtype=bool))  # rows i >= j: the models that had seen version j
    best = np.where(below, r[: T - 1, : T - 1], -np.inf).max(axis=0)
    return [float(x) for x in best - r[-1, : T - 1]]


def summary(R: Sequence[Sequence[float | None]], versions: Sequence[str] | None = None) -> dict:
    """Every metric of R, the forgetting keyed by data version (by index as text when not named)."""
    r = check_matrix(R, versions)
    names = [str(v) for v in versions] if versions is not None else [str(j) for j in range(len(r))]
    f = forgetting(R)
    return {"versions": len(r), "average_accuracy": average_accuracy(R), "backward_transfer": backward_transfer(R),
            "forgetting": dict(zip(names, f)), "average_forgetting": float(np.mean(f)) if f else None}


def _points(drop: float, allowed: float) -> str:
    """The points lost, with enough digits that the figure shown is more than the allowed one."""
    for digits in (2, 4, 6):
        if float(text := f"{drop:.{digits}f}") > allowed:
            return text
    return repr(drop)


def forgetting_refusals(candidate: Mapping[str, float], holder: Mapping[str, float], allowed_points: float,
                        holder_name: str = "the stage holder") -> list[str]:
    """The gate (module docstring): one refusal for each of the holder's test sets (by data version) on which the
    candidate scores more than `allowed_points` below `holder_name`, or was not scored; [] when none."""
    problems = []
    if isinstance(allowed_points, bool) or not isinstance(allowed_points, Real) or not 0 <= allowed_points < math.inf:
        problems.append(f"allowed forgetting {allowed_points!r}: expected a number of points >= 0")
    for whose, scores in (("candidate", candidate), (holder_name, holder)):
        if not isinstance(scores, Mapping):
            problems.append(f"{whose}'s accuracies {scores!r}: expected a mapping of data version to accuracy")
            continue
        problems += [f"{whose}'s accuracy on the test set of data version {v} {why}: expected an accuracy in [0, 1]"
                     for v, x in scores.items() if (why := _accuracy_problem(x))]
    if problems:
        raise InputError(f"the forgetting check: {'; '.join(problems)}")
    refusals = []
    for version, held in holder.items():
        if version not in candidate:
            refusals.append(f"the candidate was not scored on the test set of data version {version} "
                            f"({holder_name} has {held:.4f} on it): every past test set must be scored")
            continue
        value = candidate[version]
        drop = (held - value) * 100
        if drop > allowed_points + EPS_POINTS:
            refusals.append(f"accuracy on the test set of data version {version} {value:.4f} is "
                            f"{_points(drop, allowed_points)} points below {holder_name}'s {held:.4f}, "
                            f"more than the allowed {allowed_points:g}")
    return refusals
