"""The data contract: what a source must look like before any training time is spent.

    violations = check(table, contract, ingest_params, where)    # at ingest
    check_model_table(table, path, n_classes)                    # at every later boundary

`check` collects every violation at once (column, how many rows, example
rows) instead of stopping at the first; `profile` summarises a data version
(per-column statistics, label counts) and `drift` compares two profiles. The
report is saved by ingest as a DVC output and published by the Prefect flow.

Ingest is the single gate: what the contract accepts, the later stages can
use. So it also refuses what they would refuse or quietly spoil: inf and -inf
(unless `allow_non_finite`, then clean treats them as missing), values beyond
float32's range (the features from clean on are float32), names the pipeline's
own tables use (label, split), a label with one class, a constant or
non-finite regression target. What depends on clean's params (its split, its
fits) is checked beside this, by tasks/data/selection.py. An example row is
named by `where(i)` of the source (sources.py: a CSV line as an editor counts
it, a JSON line, a Parquet row, an image file); without one, "row i+1".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.data.tables import LABEL, SPLIT
from tasks.errors import InputError
from tasks.params import ColumnRule, Contract, Drift, Ingest

TOP_VALUES = 20  # category values kept in a profile
F32_MAX = float(np.finfo(np.float32).max)  # about 3.4e38: the largest feature value from clean on


def kind_of(field: pa.Field, text_column: str | None) -> str | None:
    """number, category or text; None for types the pipeline cannot use."""
    t = field.type
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_null(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "text" if field.name == text_column else "category"
    return None


def missing_mask(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Null, or NaN in a float column."""
    mask = pc.is_null(col, nan_is_null=True) if pa.types.is_floating(col.type) else pc.is_null(col)
    return mask


def non_finite_mask(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """inf or -inf in a float column; false everywhere else (and for missing values)."""
    if pa.types.is_floating(col.type):
        return pc.fill_null(pc.is_inf(col), False)
    return pc.and_kleene(pc.is_valid(col), pa.scalar(False))


def unusable_mask(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """What clean treats as missing: null, NaN, and (once the contract allowed them) inf and -inf."""
    return pc.or_(missing_mask(col), non_finite_mask(col))


def count(mask) -> int:
    return int(pc.sum(mask).as_py() or 0)


def as_float(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """A numeric column as float64; integers beyond 2**53 rounded, not refused (Arrow's safe cast would)."""
    return pc.cast(col, pa.float64(), safe=False)


def row_number(i: int) -> str:
    """How an example row is named when the source says nothing better (sources.py gives lines, files)."""
    return f"row {i + 1}"


def _row_examples(mask: pa.ChunkedArray | np.ndarray, col: pa.ChunkedArray, n: int,
                  where: Callable[[int], str] = row_number) -> list[str]:
    idx = np.flatnonzero(np.asarray(mask))[:n]
    return [f"{where(int(i))}: {col[int(i)].as_py()!r}" for i in idx]


def _stat(value: float | None) -> float | None:
    """A statistic for a JSON file: None where it overflowed (the JSON standard has no inf or NaN)."""
    return value if value is not None and math.isfinite(value) else None


def profile(table: pa.Table, label: str, text_column: str | None, regression: bool = False) -> dict:
    """Per-column statistics and label counts (a regression target: its statistics) of one data version."""
    cols = {}
    for field in table.schema:
        col, kind = table[field.name], kind_of(field, text_column)
        entry = {"kind": kind, "type": str(field.type), "missing": count(missing_mask(col))}
        if kind == "number" and (field.name != label or regression):
            entry["non_finite"] = count(non_finite_mask(col))
            values = as_float(col).filter(pc.invert(unusable_mask(col)))
            if len(values):
                mm = pc.min_max(values).as_py()
                entry |= {"mean": _stat(pc.mean(values).as_py()), "std": _stat(pc.stddev(values).as_py()),
                          "min": mm["min"], "max": mm["max"]}
        elif kind == "category" or field.name == label:
            counts = pc.value_counts(col.filter(pc.invert(unusable_mask(col)))).to_pylist()
            counts.sort(key=lambda c: (-c["counts"], str(c["values"])))
            entry |= {"distinct": len(counts), "top": {str(c["values"]): c["counts"] for c in counts[:TOP_VALUES]}}
        cols[field.name] = entry
    labels = {}
    if label in table.column_names and not regression:
        labels = _class_counts(table[label])
    return {"rows": table.num_rows, "columns": cols, "labels": dict(sorted(labels.items()))}


def violation(check: str, column: str | None, rows: int, message: str, examples=()) -> dict:
    return {"check": check, "column": column, "rows": int(rows), "message": message, "examples": list(examples)}


NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


@dataclass(frozen=True)
class _Context:
    """What the check of every column needs besides the column."""

    contract: Contract
    params: Ingest
    n_rows: int
    where: Callable[[int], str]

    def examples(self, mask, col: pa.ChunkedArray) -> list[str]:
        return _row_examples(mask, col, self.contract.examples, self.where)

    def allows_non_finite(self, name: str, rule: ColumnRule | None) -> bool:
        if name == self.params.label_column:  # a class or a target is never inf
            return False
        own = rule.allow_non_finite if rule else None
        return self.contract.allow_non_finite if own is None else own


def _mixed_types(col: pa.ChunkedArray, ctx: _Context) -> tuple[int, list[str]] | None:
    """A text column in which most values are numbers and some are not: a broken numeric column."""
    present = len(col) - col.null_count
    is_number = pc.match_substring_regex(pc.utf8_trim_whitespace(col), NUMBER)
    k = count(is_number)
    if 0 < k < present and k >= present / 2:
        bad = pc.fill_null(pc.invert(is_number), False)
        return present - k, ctx.examples(bad, col)
    return None


def _check_missing(name: str, col: pa.ChunkedArray, rule, kind: str | None, ctx: _Context) -> list[dict]:
    """At most max_null_ratio missing; inf and -inf, where allowed, count as missing (clean fills them)."""
    inf_allowed = kind == "number" and ctx.allows_non_finite(name, rule)
    gone = "missing or non-finite" if inf_allowed else "missing"
    n_missing = count(unusable_mask(col) if inf_allowed else missing_mask(col))
    limit = rule.max_null_ratio if rule and rule.max_null_ratio is not None else ctx.contract.max_null_ratio
    if not ctx.n_rows or n_missing / ctx.n_rows <= limit:
        return []
    what = f"every value is {gone}" if n_missing == ctx.n_rows else f"{n_missing / ctx.n_rows:.0%} of values {gone}"
    return [violation("missing", name, n_missing, f"{what}, at most {limit:.0%} allowed")]


def _check_numbers(name: str, col: pa.ChunkedArray, rule, ctx: _Context) -> list[dict]:
    """Values the later stages compute with: finite (unless allowed), within float32's range, the rule's bounds."""
    out, values = [], as_float(col)
    inf = non_finite_mask(col)
    k = count(inf)
    if k and not ctx.allows_non_finite(name, rule):
        fix = ("a label must be a finite number" if name == ctx.params.label_column else
               f"fix the source, or set contract.allow_non_finite (or contract.columns.{name}.allow_non_finite) "
               f"to true and clean treats them as missing values")
        out.append(violation("finite", name, k, f"{k} value(s) inf or -inf; {fix}", ctx.examples(inf, col)))
    if name != ctx.params.label_column or ctx.params.task == "regression":  # class labels are names, not values
        big = pc.fill_null(pc.and_(pc.greater(pc.abs(values), F32_MAX), pc.is_finite(values)), False)
        k = count(big)
        if k:
            out.append(violation("extreme", name, k, f"{k} value(s) beyond ±{F32_MAX:.1e}, float32's range: from "
                                 f"clean on the values are float32; rescale the column (other units, a log)",
                                 ctx.examples(big, col)))
    if rule and (rule.min is not None or rule.max is not None):
        outside = [pc.less(values, rule.min)] if rule.min is not None else []
        outside += [pc.greater(values, rule.max)] if rule.max is not None else []
        bad = pc.fill_null(outside[0] if len(outside) == 1 else pc.or_(*outside), False)
        k = count(bad)
        if k:
            out.append(violation("range", name, k, f"{k} value(s) outside [{rule.min}, {rule.max}]",
                                 ctx.examples(bad, col)))
    return out


def _check_allowed(name: str, col: pa.ChunkedArray, kind: str, rule, ctx: _Context) -> list[dict]:
    if kind == "number":  # compare numbers as numbers: 1 == 1.0 == True
        try:
            allowed = pa.array([float(a) for a in rule.allowed], pa.float64())
        except ValueError:
            return [violation("allowed", name, ctx.n_rows, f"contract.columns.{name}.allowed: the column holds "
                                                           f"numbers, but {list(rule.allowed)} are not")]
        values = as_float(col)
    else:
        allowed, values = pa.array([str(a) for a in rule.allowed]), pc.cast(col, pa.string())
    bad = pc.fill_null(pc.and_(pc.invert(pc.is_in(values, allowed)), pc.is_valid(col)), False)
    k = count(bad)
    return [violation("allowed", name, k, f"{k} value(s) not in {list(rule.allowed)}", ctx.examples(bad, col))
            ] if k else []


def _check_column(field: pa.Field, col: pa.ChunkedArray, rule, ctx: _Context) -> list[dict]:
    name, kind = field.name, kind_of(field, ctx.params.text_column)
    out = _check_missing(name, col, rule, kind, ctx)
    if kind is None:
        return out + [violation("type", name, ctx.n_rows, f"type {field.type} cannot be used; expected numbers, "
                                                          f"categories or text")]
    declared = rule.type if rule else None
    if kind == "category" and declared in (None, "number"):
        mixed = _mixed_types(col, ctx)
        if mixed:
            return out + [violation("type", name, mixed[0], f"mixed types: mostly numbers, but {mixed[0]} value(s) "
                                                             f"are not", mixed[1])]
    if declared and declared != kind and not (declared == "text" and kind == "category"):
        return out + [violation("type", name, ctx.n_rows, f"expected {declared}, found {kind} ({field.type})")]
    if kind == "number":
        out += _check_numbers(name, col, rule, ctx)
    if rule and rule.allowed is not None:
        out += _check_allowed(name, col, kind, rule, ctx)
    return out


def _class_counts(col: pa.ChunkedArray) -> dict[str, int]:
    """Rows per class, of the rows that have a label (clean drops the others)."""
    present = col.filter(pc.invert(unusable_mask(col)))
    return {str(c["values"]): c["counts"] for c in pc.value_counts(present).to_pylist()}


def _check_labels(table: pa.Table, label: str, contract: Contract) -> list[dict]:
    counts = _class_counts(table[label])
    if not counts:
        return [violation("labels", label, table.num_rows, "no row has a label")]
    out = []
    if len(counts) == 1:
        (only, n), = counts.items()
        out.append(violation("labels", label, n, f"one class only ({only!r}, {n} rows): a classifier needs at "
                                                 f"least two; add rows of other classes"))
    small = {k: v for k, v in counts.items() if v < contract.min_class_rows}
    if small:
        out.append(violation("balance", label, sum(small.values()),
                             f"classes with fewer than {contract.min_class_rows} rows: {small}"))
    ratio = max(counts.values()) / min(counts.values())
    if contract.max_class_ratio is not None and ratio > contract.max_class_ratio:
        out.append(violation("balance", label, table.num_rows,
                             f"largest/smallest class is {ratio:.1f}, at most {contract.max_class_ratio} "
                             f"allowed (rows per class: {counts})"))
    return out


def _check_names(table: pa.Table, contract: Contract, params: Ingest) -> list[dict]:
    """The columns the contract and the ingest params name, and the names the pipeline keeps for itself."""
    out, names, n = [], table.column_names, table.num_rows
    label, text = params.label_column, params.text_column
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    for name, rule in contract.columns.items():
        if name not in names and rule.required:
            out.append(violation("columns", name, n, f"declared column missing (columns: {shown})"))
    if label not in names:
        out.append(violation("columns", label, n, f"label column not found (columns: {shown}); "
                                                  f"set ingest.label_column"))
    if text and text not in names:
        out.append(violation("columns", text, n, "ingest.text_column not found"))
    if text and text == label:
        out.append(violation("columns", text, n, "ingest.text_column and ingest.label_column name the same column"))
    for name in names:
        if name in (LABEL, SPLIT) and name != label:
            out.append(violation("columns", name, n, f"the name {name!r} is taken by the pipeline's own column of "
                                                     f"that name from clean on (label, split); rename it"))
        if contract.only_declared and name not in contract.columns and name != label:
            out.append(violation("columns", name, n, "column not declared in contract.columns"))
    features = [f for f in table.schema if f.name != label]
    if not features:
        out.append(violation("columns", None, n, "no feature columns besides the label"))
    if params.image_shape:
        h, w = params.image_shape
        if len(features) != h * w:
            out.append(violation("columns", None, n, f"ingest.image_shape {h}x{w} needs {h * w} feature columns, "
                                                     f"found {len(features)}"))
        out += [violation("type", f.name, n, f"ingest.image_shape: a pixel column holds numbers, this one {f.type}")
                for f in features if kind_of(f, text) in ("category", "text")]
    return out


def check(table: pa.Table, contract: Contract, params: Ingest, where: Callable[[int], str] = row_number
          ) -> list[dict]:
    """Every violation of the contract by a raw table, as JSON-ready dicts; example rows named by `where`."""
    out, names, label = [], table.column_names, params.label_column
    if table.num_rows < contract.min_rows:
        out.append(violation("rows", None, table.num_rows,
                             f"{table.num_rows} data rows, at least {contract.min_rows} required"))
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        return out + [violation("columns", c, table.num_rows, "column name appears more than once")
                      for c in repeated]
    out += _check_names(table, contract, params)
    ctx = _Context(contract, params, table.num_rows, where)
    for field in table.schema:
        out += _check_column(field, table[field.name], contract.columns.get(field.name), ctx)
    if label in names and not any(v["column"] == label and v["check"] == "type" for v in out):
        out += (_check_target(table, label, ctx) if params.task == "regression" else
                _check_labels(table, label, contract))
    return out


def _check_target(table: pa.Table, label: str, ctx: _Context) -> list[dict]:
    """A regression target: numbers, at least two distinct ones (class balance means nothing here)."""
    col = table[label]
    if kind_of(table.schema.field(label), None) != "number":
        return [violation("type", label, table.num_rows, f"ingest.task is regression, so the label must hold "
                          f"numbers; it holds {col.type}", ctx.examples(pc.is_valid(col), col))]
    present = as_float(col).filter(pc.invert(unusable_mask(col)))
    if not len(present):
        return [violation("labels", label, table.num_rows, "no row has a target value")]
    if pc.count_distinct(present).as_py() < 2:
        return [violation("labels", label, len(present), f"every target value is {present[0].as_py()!r}: a "
                                                         f"regression needs at least two distinct values")]
    return []


def drift(previous: dict | None, current: dict, limits: Drift) -> dict:
    """Label and numeric-feature drift of `current` against `previous` (two profiles)."""
    if not previous:
        return {"against": None, "exceeded": []}
    old, new = previous.get("labels", {}), current.get("labels", {})
    n_old, n_new = sum(old.values()) or 1, sum(new.values()) or 1
    tvd = 0.5 * sum(abs(old.get(k, 0) / n_old - new.get(k, 0) / n_new) for k in set(old) | set(new))
    shifts = {}
    for name, c in current["columns"].items():
        p = previous["columns"].get(name, {})
        if c.get("mean") is not None and p.get("mean") is not None and p.get("std"):
            shift = abs(c["mean"] - p["mean"]) / p["std"]
            if math.isfinite(shift):
                shifts[name] = shift
    exceeded = []
    if tvd > limits.max_label_shift:
        exceeded.append(f"label distribution moved by {tvd:.3f} (total variation), limit {limits.max_label_shift}")
    for name, s in sorted(shifts.items(), key=lambda kv: -kv[1]):
        if s > limits.max_mean_shift:
            exceeded.append(f"column {name!r}: mean moved by {s:.2f} previous stds, limit {limits.max_mean_shift}")
    top = dict(sorted(shifts.items(), key=lambda kv: -kv[1])[:10])
    return {"against": previous.get("version"), "label_shift": round(tvd, 6),
            "mean_shift_top": {k: round(v, 4) for k, v in top.items()}, "exceeded": exceeded}


def format_violations(path, violations: list[dict], report: Path) -> str:
    lines = [f"{path}: the data contract failed, {len(violations)} violation(s) (full report: {report}):"]
    for v in violations:
        where = f"column {v['column']!r}: " if v["column"] else ""
        ex = f" e.g. {'; '.join(v['examples'][:3])}" if v["examples"] else ""
        lines.append(f"  - {where}{v['message']}{ex}")
    return "\n".join(lines)


def check_model_table(table: pa.Table, path: Path, n_classes: int | None = None) -> None:
    """A boundary check of a table written from clean on: finite features, labels in range."""
    from tasks.data.tables import feature_names

    problems = []
    for name in feature_names(table.schema):
        col = table[name]
        if not pa.types.is_floating(col.type):
            continue
        finite = pc.is_finite(col)
        bad = len(col) - int(pc.sum(finite).as_py() or 0)
        if bad:
            problems.append(f"column {name!r}: {bad} non-finite value(s)")
    labels = table[LABEL]
    if n_classes is not None and len(labels):
        lo, hi = pc.min_max(labels).as_py().values()
        if lo < 0 or hi >= n_classes:
            problems.append(f"labels outside 0..{n_classes - 1} (found {lo}..{hi})")
    if pa.types.is_floating(labels.type):  # a regression target: finite, nothing more to say
        bad = len(labels) - int(pc.sum(pc.is_finite(labels)).as_py() or 0)
        if bad:
            problems.append(f"{bad} non-finite target value(s)")
    splits = set(pc.unique(table[SPLIT]).to_pylist()) if SPLIT in table.column_names else set()
    if "train" in splits and n_classes is not None:  # the whole clean table: every held-out label is learnable
        seen = {s: set(pc.unique(labels.filter(pc.equal(table[SPLIT], s))).to_pylist()) for s in splits}
        for s in sorted(splits - {"train"}):
            unseen = sorted(seen[s] - seen["train"])
            if unseen:
                problems.append(f"label(s) {unseen} appear in {s} but not in train")
    if problems:
        raise InputError(f"{path}: fails the pipeline's checks: " + "; ".join(problems[:20]))
