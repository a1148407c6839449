"""The data contract: what a source must look like before any training time is spent.

    report = check(table, contract, ingest_params, path)    # at ingest
    check_model_table(table, path, n_classes)               # at every later boundary

`check` collects every violation at once (column, how many rows, example
rows) instead of stopping at the first; `profile` summarises a data version
(per-column statistics, label counts) and `drift` compares two profiles. The
report is saved by ingest as a DVC output and published by the Prefect flow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import InputError
from tasks.params import Contract, Drift, Ingest

TOP_VALUES = 20  # category values kept in a profile


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


def _row_examples(mask: pa.ChunkedArray | np.ndarray, col: pa.ChunkedArray, n: int) -> list[str]:
    idx = np.flatnonzero(np.asarray(mask))[:n]
    return [f"row {i + 1}: {col[int(i)].as_py()!r}" for i in idx]


def profile(table: pa.Table, label: str, text_column: str | None, regression: bool = False) -> dict:
    """Per-column statistics and label counts (a regression target: its statistics) of one data version."""
    cols = {}
    for field in table.schema:
        col, kind = table[field.name], kind_of(field, text_column)
        entry = {"kind": kind, "type": str(field.type), "missing": int(pc.sum(missing_mask(col)).as_py() or 0)}
        if kind == "number" and (field.name != label or regression):
            values = pc.cast(col, pa.float64()).filter(pc.invert(missing_mask(col)))
            if len(values):
                mm = pc.min_max(values).as_py()
                entry |= {"mean": pc.mean(values).as_py(), "std": pc.stddev(values).as_py(),
                          "min": mm["min"], "max": mm["max"]}
        elif kind == "category" or field.name == label:
            counts = pc.value_counts(col.drop_null()).to_pylist()
            counts.sort(key=lambda c: (-c["counts"], str(c["values"])))
            entry |= {"distinct": len(counts), "top": {str(c["values"]): c["counts"] for c in counts[:TOP_VALUES]}}
        cols[field.name] = entry
    labels = {}
    if label in table.column_names and not regression:
        labels = {str(c["values"]): c["counts"] for c in pc.value_counts(table[label].drop_null()).to_pylist()}
    return {"rows": table.num_rows, "columns": cols, "labels": dict(sorted(labels.items()))}


def violation(check: str, column: str | None, rows: int, message: str, examples=()) -> dict:
    return {"check": check, "column": column, "rows": int(rows), "message": message, "examples": list(examples)}


NUMBER = r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


def _mixed_types(col: pa.ChunkedArray, n: int) -> tuple[int, list[str]] | None:
    """A text column in which most values are numbers and some are not: a broken numeric column."""
    present = len(col) - col.null_count
    is_number = pc.match_substring_regex(pc.utf8_trim_whitespace(col), NUMBER)
    k = int(pc.sum(is_number).as_py() or 0)
    if 0 < k < present and k >= present / 2:
        bad = pc.fill_null(pc.invert(is_number), False)
        return present - k, _row_examples(bad, col, n)
    return None


def _check_column(name: str, col: pa.ChunkedArray, field: pa.Field, rule, contract: Contract,
                  text_column: str | None, n_rows: int) -> list[dict]:
    out, n = [], contract.examples
    kind = kind_of(field, text_column)
    missing = missing_mask(col)
    n_missing = int(pc.sum(missing).as_py() or 0)
    limit = rule.max_null_ratio if rule and rule.max_null_ratio is not None else contract.max_null_ratio
    if n_rows and n_missing / n_rows > limit:
        what = "every value is missing" if n_missing == n_rows else f"{n_missing / n_rows:.0%} of values missing"
        out.append(violation("missing", name, n_missing, f"{what}, at most {limit:.0%} allowed"))
    if kind is None:
        out.append(violation("type", name, n_rows, f"type {field.type} cannot be used; expected numbers, "
                                                    f"categories or text"))
        return out
    declared = rule.type if rule else None
    if kind == "category" and declared in (None, "number"):
        mixed = _mixed_types(col, n)
        if mixed:
            out.append(violation("type", name, mixed[0], f"mixed types: mostly numbers, but {mixed[0]} value(s) "
                                                          f"are not", mixed[1]))
            return out
    if declared and declared != kind and not (declared == "text" and kind == "category"):
        out.append(violation("type", name, n_rows, f"expected {declared}, found {kind} ({field.type})"))
        return out
    if rule and kind == "number" and (rule.min is not None or rule.max is not None):
        values = pc.cast(col, pa.float64())
        outside = [pc.less(values, rule.min)] if rule.min is not None else []
        outside += [pc.greater(values, rule.max)] if rule.max is not None else []
        bad = pc.fill_null(outside[0] if len(outside) == 1 else pc.or_(*outside), False)
        k = int(pc.sum(bad).as_py() or 0)
        if k:
            out.append(violation("range", name, k, f"{k} value(s) outside [{rule.min}, {rule.max}]",
                                  _row_examples(bad, col, n)))
    if rule and rule.allowed is not None:
        if kind == "number":  # compare numbers as numbers: 1 == 1.0 == True
            try:
                allowed = pa.array([float(a) for a in rule.allowed], pa.float64())
            except ValueError:
                return out + [violation("allowed", name, n_rows, f"contract.columns.{name}.allowed: the column "
                                                                 f"holds numbers, but {list(rule.allowed)} are not")]
            values = pc.cast(col, pa.float64())
        else:
            allowed, values = pa.array([str(a) for a in rule.allowed]), pc.cast(col, pa.string())
        bad = pc.fill_null(pc.and_(pc.invert(pc.is_in(values, allowed)), pc.is_valid(col)), False)
        k = int(pc.sum(bad).as_py() or 0)
        if k:
            out.append(violation("allowed", name, k, f"{k} value(s) not in {list(rule.allowed)}",
                                  _row_examples(bad, col, n)))
    return out


def _check_labels(table: pa.Table, label: str, contract: Contract) -> list[dict]:
    counts = {str(c["values"]): c["counts"] for c in pc.value_counts(table[label].drop_null()).to_pylist()}
    if not counts:
        return [violation("labels", label, table.num_rows, "no row has a label")]
    out = []
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


def check(table: pa.Table, contract: Contract, params: Ingest) -> list[dict]:
    """Every violation of the contract by a raw table, as JSON-ready dicts."""
    out, names = [], table.column_names
    label, text = params.label_column, params.text_column
    if table.num_rows < contract.min_rows:
        out.append(violation("rows", None, table.num_rows,
                              f"{table.num_rows} data rows, at least {contract.min_rows} required"))
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        return out + [violation("columns", c, table.num_rows, "column name appears more than once")
                      for c in repeated]
    for name, rule in contract.columns.items():
        if name not in names and rule.required:
            shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
            out.append(violation("columns", name, table.num_rows, f"declared column missing (columns: {shown})"))
    if label not in names:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        out.append(violation("columns", label, table.num_rows,
                              f"label column not found (columns: {shown}); set ingest.label_column"))
    if text and text not in names:
        out.append(violation("columns", text, table.num_rows, "ingest.text_column not found"))
    if contract.only_declared:
        for name in names:
            if name not in contract.columns and name != label:
                out.append(violation("columns", name, table.num_rows, "column not declared in contract.columns"))
    if not [n for n in names if n != label]:
        out.append(violation("columns", None, table.num_rows, "no feature columns besides the label"))
    if params.image_shape:
        h, w = params.image_shape
        n_features = len([n for n in names if n != label])
        if n_features != h * w:
            out.append(violation("columns", None, table.num_rows,
                                  f"ingest.image_shape {h}x{w} needs {h * w} feature columns, found {n_features}"))
    for field in table.schema:
        out += _check_column(field.name, table[field.name], field, contract.columns.get(field.name), contract,
                             text, table.num_rows)
    if label in names and not any(v["column"] == label and v["check"] == "type" for v in out):
        out += (_check_target(table, label, contract.examples) if params.task == "regression" else
                _check_labels(table, label, contract))
    return out


def _check_target(table: pa.Table, label: str, examples: int) -> list[dict]:
    """A regression target: numbers, some of them present (class balance means nothing here)."""
    col = table[label]
    if kind_of(table.schema.field(label), None) != "number":
        return [violation("type", label, table.num_rows, f"ingest.task is regression, so the label must hold "
                          f"numbers; it holds {col.type}", _row_examples(pc.is_valid(col), col, examples))]
    if pc.sum(pc.invert(missing_mask(col))).as_py() in (0, None):
        return [violation("labels", label, table.num_rows, "no row has a target value")]
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
        if "mean" in c and "mean" in p and p.get("std"):
            shifts[name] = abs(c["mean"] - p["mean"]) / p["std"]
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
    from tasks.data.tables import LABEL, SPLIT, feature_names

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
