"""The fitted preprocessing: fit on training rows column by column, apply batch by batch.

    from tasks.data import transform
    stats = transform.fit_numeric(name, values, params)         # clean: per column, on training rows
    numeric = transform.finish_scaling([stats, ...], params)    # clean: the scales, once all are fitted
    arrays, text = transform.apply(batch, t)                    # clean, evaluate, predict

The transform is a JSON-ready dict saved beside the clean table. Numeric
columns: a fill value (mean / median / mode / constant), optional clipping to
training quantiles, then standard or min-max scaling (per column, or one scale
for all, as for pixels). Categorical columns: a fill (mode or a constant
category), then one-hot or ordinal codes over the training categories; a
category never seen in training becomes all zeros (one-hot) or -1 (ordinal).
A text column is normalised (Unicode NFKD, accents stripped, lower case,
whitespace collapsed) and passed on as text for augment to tokenize.

inf and -inf count as missing (the contract lets them through only with
`contract.allow_non_finite`). A scaled value is kept within +-65504, float16's
largest, so the features fit every training precision: a training row never
gets there (its standard score is at most the square root of the row count),
only a held-out or new value millions of training spreads away; `apply`
counts what it clipped to the training quantiles and what it had to saturate.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.errors import InputError
from tasks.params import Clean, TextNorm


def strategy_of(name: str, kind: str, params: Clean) -> str:
    default = params.missing if kind == "number" else params.missing_category
    return params.missing_columns.get(name, default)


SCALED_LIMIT = 65504.0  # float16's largest finite value: the bound of a scaled feature or target
RAW_LIMIT = float(np.finfo(np.float32).max)  # scaling none: the values as they are, within float32


def as_float64(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A numeric column as float64 values, a missing value (null, NaN, inf, -inf) as NaN; integers beyond
    2**53 rounded (Arrow's safe cast would refuse them)."""
    x = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # nulls -> NaN
    inf = np.isinf(x)
    return np.where(inf, np.nan, x) if inf.any() else x


def _count(counts: dict | None, kind: str, name: str, moved: np.ndarray) -> None:
    """counts[kind][name] += how many values `moved` marks (nothing without counts)."""
    k = int(np.count_nonzero(moved)) if counts is not None else 0
    if k:
        per = counts.setdefault(kind, {})
        per[name] = per.get(name, 0) + k


def _bounded(x: np.ndarray, limit: float, counts: dict | None, kind: str, name: str) -> None:
    """Clip x in place to [-limit, limit], counting the values that moved."""
    _count(counts, kind, name, np.abs(x) > limit)
    np.clip(x, -limit, limit, out=x)


def _mode(values):
    uniq, counts = np.unique(values, return_counts=True)
    return uniq[np.argmax(counts)]  # ties: the smallest value


def fit_numeric(name: str, x: np.ndarray, params: Clean) -> dict:
    """Fill, clip bounds and moments of one numeric column's training values (NaN = missing).

    The median and the clipping quantiles are taken in one partition of the
    values present; the moments are those of the filled, clipped values.
    """
    strategy = strategy_of(name, "number", params)
    present = x[~np.isnan(x)]
    if present.size == 0 and strategy not in ("constant", "drop"):
        raise InputError(f"column {name!r}: no value in any training row, so its {strategy} is undefined; "
                         f"set clean.missing_columns.{name} to constant or drop the column")
    qs = [0.5] + list(params.outliers or ())
    needed = present.size and (strategy == "median" or params.outliers)
    quantiles = np.quantile(present, qs, overwrite_input=True) if needed else None  # present is our own copy
    fill = {"mean": lambda: present.mean(), "median": lambda: quantiles[0], "mode": lambda: _mode(present),
            "constant": lambda: params.fill_value, "drop": lambda: 0.0}[strategy]()
    x = np.where(np.isnan(x), fill, x)
    lo = hi = None
    if params.outliers and quantiles is not None:
        lo, hi = float(quantiles[1]), float(quantiles[2])
        np.clip(x, lo, hi, out=x)
    return {"name": name, "strategy": strategy, "fill": float(fill), "clip": [lo, hi] if lo is not None else None,
            "n": int(x.size), "sum": float(x.sum()), "sumsq": float(np.dot(x, x)),
            "min": float(x.min()) if x.size else 0.0, "max": float(x.max()) if x.size else 0.0}


def finish_scaling(stats: list[dict], params: Clean) -> list[dict]:
    """Centre and scale per column, or one pair for all numeric columns (pixels keep their relations)."""
    groups = [[s] for s in stats] if params.per_column else [stats]
    for group in groups:
        n = sum(s["n"] for s in group) or 1
        mean = sum(s["sum"] for s in group) / n
        std = max(sum(s["sumsq"] for s in group) / n - mean**2, 0.0) ** 0.5
        lo, hi = min((s["min"] for s in group), default=0.0), max((s["max"] for s in group), default=1.0)
        center, scale = {"standard": (mean, std), "minmax": (lo, hi - lo), "none": (0.0, 1.0)}[params.scaling]
        for s in group:
            s["center"], s["scale"] = center, scale if scale > 0 else 1.0  # a constant column stays finite
            s["limit"] = RAW_LIMIT if params.scaling == "none" else SCALED_LIMIT
    return [{k: s[k] for k in ("name", "strategy", "fill", "clip", "center", "scale", "limit")} for s in stats]


def _value_counts(values: pa.ChunkedArray) -> list[dict]:
    """[{values, counts}] of the non-missing values; a dictionary column is counted by its codes."""
    if pa.types.is_dictionary(values.type):
        values = values.unify_dictionaries()
        words = values.chunk(0).dictionary if values.num_chunks else pa.array([], pa.string())
        codes = np.concatenate([c.indices.drop_null().to_numpy(zero_copy_only=False) for c in values.chunks] or
                               [np.empty(0, np.int64)])
        counts = np.bincount(codes, minlength=len(words))
        return [{"values": w, "counts": int(k)} for w, k in zip(pc.cast(words, pa.string()).to_pylist(), counts)
                if k]
    return pc.value_counts(pc.cast(values, pa.string()).drop_null()).to_pylist()


def fit_category(name: str, values: pa.ChunkedArray, params: Clean) -> dict:
    strategy = strategy_of(name, "category", params)
    if strategy not in ("drop", "mode", "constant"):
        raise InputError(f"clean.missing_columns.{name}: {strategy!r} needs numbers; column {name!r} holds "
                         f"categories, use mode, constant or drop")
    counts = _value_counts(values)
    fill = None
    if strategy == "mode" and counts:
        fill = min(counts, key=lambda c: (-c["counts"], c["values"]))["values"]
    elif strategy == "constant":
        fill = params.fill_category
    categories = sorted({c["values"] for c in counts} | ({fill} if fill is not None and values.null_count else set()))
    if len(categories) > params.max_categories:
        raise InputError(f"column {name!r}: {len(categories)} distinct values in training rows, more than "
                         f"clean.max_categories ({params.max_categories}); raise the limit, or name it as "
                         f"ingest.text_column if it is free text")
    return {"name": name, "strategy": strategy, "fill": fill, "categories": categories,
            "encoding": params.categorical}


def output_columns(t: dict) -> list[str]:
    names = [c["name"] for c in t["numeric"]]
    for c in t["categorical"]:
        names += [f"{c['name']}={v}" for v in c["categories"]] if c["encoding"] == "onehot" else [c["name"]]
    return names


def flag_names(t: dict) -> list[str]:
    """The one-hot features: booleans in the clean table, floats (0 or 1) from augment on."""
    return [f"{c['name']}={v}" for c in t["categorical"] if c["encoding"] == "onehot" for v in c["categories"]]


def normalise_text(values: pa.Array | pa.ChunkedArray, norm: TextNorm | dict) -> pa.Array:
    norm = TextNorm.model_validate(norm) if isinstance(norm, dict) else norm
    out = pc.fill_null(pc.cast(values, pa.string()), "")
    if norm.strip_accents:
        out = pc.replace_substring_regex(pc.utf8_normalize(out, "NFKD"), r"\p{Mn}+", "")
    if norm.lowercase:
        out = pc.utf8_lower(out)
    if norm.collapse_whitespace:
        out = pc.utf8_trim_whitespace(pc.replace_substring_regex(out, r"\s+", " "))
    return out


def _codes(values: pa.Array, categories: list[str], missing: int = -1) -> np.ndarray:
    """Index of each value in `categories`: -1 for an unseen value, `missing` for a missing one."""
    value_set = pa.array(categories, pa.string())
    if pa.types.is_dictionary(values.type):  # look up each distinct value once
        idx = pc.index_in(pc.cast(values.dictionary, pa.string()), value_set=value_set)
        lookup = np.append(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False), missing)
        return lookup[pc.fill_null(values.indices, len(values.dictionary)).to_numpy(zero_copy_only=False)]
    codes = pc.fill_null(pc.index_in(pc.cast(values, pa.string()), value_set=value_set), -1)
    return np.where(pc.is_null(values).to_numpy(zero_copy_only=False), missing,
                    codes.to_numpy(zero_copy_only=False))


def apply(batch: pa.RecordBatch | pa.Table, t: dict, rows: np.ndarray | None = None, counts: dict | None = None
          ) -> tuple[list[pa.Array], pa.Array | None]:
    """Feature arrays (in output_columns order: float32, one-hot flags boolean; see flag_names) and the
    normalised text column, if any, of the batch's rows, or of those where the boolean mask `rows` is true
    (taken from the arrays, without copying the whole batch first). Given `counts`, adds to
    counts["clipped"][column] the values clipped to the training quantiles and to counts["saturated"][column]
    those scaled beyond the limit."""
    arrays = []
    for c in t["numeric"]:  # in place on one float64 copy of the column
        x = as_float64(batch.column(c["name"]))
        x = x[rows] if rows is not None else x if x.flags.writeable else x.copy()  # not the batch's own buffer
        np.copyto(x, c["fill"], where=np.isnan(x))
        if c["clip"]:
            lo, hi = c["clip"]
            if counts is not None:
                _count(counts, "clipped", c["name"], (x < lo) | (x > hi))
            np.clip(x, lo, hi, out=x)
        x -= c["center"]
        x /= c["scale"]
        _bounded(x, c.get("limit", RAW_LIMIT), counts, "saturated", c["name"])
        arrays.append(pa.array(x.astype(np.float32)))
    for c in t["categorical"]:
        values = batch.column(c["name"])
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        fill = c["categories"].index(c["fill"]) if c["fill"] in c["categories"] else -1
        codes = _codes(values, c["categories"], missing=fill)
        codes = codes[rows] if rows is not None else codes
        if c["encoding"] == "onehot":  # one row per category, true where the row has it (code -1: none)
            onehot = np.zeros((len(c["categories"]), len(codes)), bool)
            seen = np.flatnonzero(codes >= 0)
            onehot[codes[seen], seen] = True
            arrays += [pa.array(row) for row in onehot]
        else:
            arrays.append(pa.array(codes.astype(np.float32)))
    text = None
    if t.get("text_column"):
        values = batch.column(t["text_column"])
        text = normalise_text(values.filter(pa.array(rows)) if rows is not None else values, t["text"])
        if isinstance(text, pa.ChunkedArray):
            text = text.combine_chunks()
    return arrays, text


def label_values(values: pa.Array | pa.ChunkedArray, t: dict, counts: dict | None = None) -> np.ndarray:
    """What the model learns: class indices (int64), or the standardised target (float32) of a regression,
    within SCALED_LIMIT (a value beyond it counted in counts["saturated"][label column])."""
    if t.get("task") == "regression":
        y = (as_float64(values) - t["target"]["center"]) / t["target"]["scale"]
        _bounded(y, SCALED_LIMIT, counts, "saturated", t["label_column"])
        return y.astype(np.float32)
    return label_codes(values, t["classes"])


def label_codes(values: pa.Array | pa.ChunkedArray, classes: list) -> np.ndarray:
    """Class index of each label (classes in the order saved in the transform)."""
    return _codes(values, [str(c) for c in classes]).astype(np.int64)
