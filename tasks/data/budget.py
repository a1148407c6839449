"""The label budget: which classes, and how many rows of each, a snapshot keeps of its source.

    rows, record = label_budget(table, ingest_params)   # kept row indices (source order) and what was applied

Ingest applies it to the source before the contract checks and before the
snapshot is written, so the snapshot, its data version, its profile and the
contract report all describe the kept rows; the manifest and the report
record what was applied (`selection`: labels, per_class, sample_seed, rows
before and after). With neither `ingest.labels` nor `ingest.per_class` set
every row is kept and nothing is recorded.

`ingest.labels` keeps the rows whose label is one of the listed values,
compared as the label column holds them: a numeric column as numbers (1 and
1.0 agree), any other as text. A listed value the source has no row of is an
error naming `ingest.labels`, the missing values and the labels there are.

`ingest.per_class: k` keeps, of each class, the k distinct labelled rows
with the smallest sample hash: the row's content hash (tasks/data/hashing.py,
all columns) mixed with `ingest.sample_seed`. Rows without a label and repeats
of a row (all but its first occurrence) are never sampled, so a class keeps
min(k, its distinct labelled rows) rows, and clean's duplicate drop takes none
of them (its `missing: drop` may, for a row with a gap). What is guaranteed:

- the sample of a class depends on that class's rows and the seed alone, not
  on their order or positions, nor on other classes or `ingest.labels`;
- appending rows changes the kept rows of a class only where the budget
  forces it: an old row the sample passed over never comes in, and an old
  kept row leaves only for a new row of its class with a smaller hash, one
  out for each one in; a class with at most k distinct rows keeps them all;
- raising k keeps every row a smaller k kept (the samples are nested);
- another seed draws another sample. The salt is kept apart from the split's
  (clean.split.seed), so the sample is not drawn from one split even at an
  equal seed.

`ingest.per_class_in: train` applies the budget to the training split only:
each row's split is the one clean will give it (clean.split's key hash, the
function clean runs), k rows of each class's training rows are sampled as
above, and every validation and test row of the kept labels stays, so a
few-label child is measured on a whole test split. Clean's split of the
snapshot is the same, as a row's split depends on its own key alone.

A column added to (or dropped from) the source changes every row's content,
and so draws a new sample. Kept rows stay in source order. Two distinct rows with the same 64-bit hash
(about n^2 / 2^65) would tie, broken by position.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.data.contract import as_float, kind_of, unusable_mask
from tasks.data.hashing import assign_splits, first_occurrences, mix, row_hash
from tasks.errors import InputError
from tasks.params import Ingest, Split

_SAMPLE = np.uint64(0x7065725F636C6173)  # "per_clas": the sample's salt is never the split's
MAX_SHOWN = 30  # labels named in an error


def sample_hash(h: np.ndarray, seed: int) -> np.ndarray:
    """Each row's rank in a per-class sample, from its content hash and the seed alone."""
    salt = mix(np.array([seed % 2**64], np.uint64) ^ _SAMPLE)
    return mix(h ^ salt)


def _values(col: pa.ChunkedArray, numeric: bool) -> pa.ChunkedArray:
    """The label column as compared: float64 for a numeric one, text otherwise."""
    return as_float(col) if numeric else pc.cast(col, pa.string())


def _shown(values: list) -> str:
    shown = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values[:MAX_SHOWN]]
    return str(shown)[:-1] + (f", ... ({len(values)} in all)]" if len(values) > MAX_SHOWN else "]")


def _in_labels(col: pa.ChunkedArray, numeric: bool, labels: tuple, label: str) -> np.ndarray:
    """Rows whose label is one of `labels`; one error naming ingest.labels for every value no row has."""
    words = [v for v in labels if numeric and isinstance(v, str) and not _is_number(v)]
    listed = [v for v in labels if v not in words]
    wanted = [float(v) if numeric else str(v) for v in listed]
    values = _values(col, numeric)
    have = sorted(pc.unique(values.filter(pc.invert(unusable_mask(col)))).to_pylist())
    found = set(have)
    missing = [v for v, w in zip(listed, wanted) if w not in found]
    problems = [f"{_shown(missing)} not in the source's label column {label!r}"] if missing else []
    if words:
        problems.append(f"{words} are not numbers, and the label column holds numbers (write [0, 1], not "
                        f"['0', '1'])")
    if problems:
        raise InputError(f"ingest.labels: {'; '.join(problems)}; the labels there are {_shown(have)}")
    mask = pc.fill_null(pc.is_in(values, pa.array(wanted, values.type)), False)
    return mask.to_numpy(zero_copy_only=False)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _per_class(table: pa.Table, col: pa.ChunkedArray, numeric: bool, keep: np.ndarray, k: int, seed: int
               ) -> np.ndarray:
    """Of the rows in `keep`, at most k per class: the distinct labelled ones of smallest sample hash."""
    h = row_hash(table, table.column_names)
    labeled = pc.invert(unusable_mask(col)).to_numpy(zero_copy_only=False)
    rows = np.flatnonzero(keep & labeled & first_occurrences(h))
    classes = pc.dictionary_encode(_values(col, numeric).combine_chunks()).indices
    codes = pc.fill_null(classes, -1).to_numpy(zero_copy_only=False)[rows]
    rank = sample_hash(h, seed)[rows]
    order = np.lexsort((rows, rank, codes))  # by class, then hash, then position
    codes, rows = codes[order], rows[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    within = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    out = np.zeros(table.num_rows, bool)
    out[rows[within < k]] = True
    return out


def label_budget(table: pa.Table, params: Ingest, split: Split | None = None
                 ) -> tuple[np.ndarray | None, dict | None]:
    """The indices of the rows kept (in source order) and the record of what was applied; (None, None) when
    nothing is selected, or when the label column is missing or of no usable type (the contract names it)."""
    label = params.label_column
    if (params.labels is None and params.per_class is None) or label not in table.column_names:
        return None, None
    kind = kind_of(table.schema.field(label), None)
    if kind is None:
        return None, None
    col, numeric, n = table[label], kind == "number", table.num_rows
    keep = np.ones(n, bool)
    if params.labels is not None:
        keep &= _in_labels(col, numeric, params.labels, label)
    if params.per_class is not None and params.per_class_in == "train":  # the split clean will give each row
        split = split or Split()
        keys = list(split.key_columns) or table.column_names
        unknown = [k for k in keys if k not in table.column_names]
        if unknown:
            raise InputError(f"clean.split.key_columns: {unknown} not in the source (its columns: "
                             f"{', '.join(table.column_names[:12])}); ingest.per_class_in train needs each row's split")
        held_out = assign_splits(row_hash(table, keys), split) != 0
        keep = _per_class(table, col, numeric, keep & ~held_out, params.per_class, params.sample_seed) \
            | (keep & held_out)
    elif params.per_class is not None:
        keep = _per_class(table, col, numeric, keep, params.per_class, params.sample_seed)
    rows = np.flatnonzero(keep)
    record = {"labels": list(params.labels) if params.labels is not None else None, "per_class": params.per_class,
              "sample_seed": params.sample_seed if params.per_class is not None else None,
              **({"per_class_in": "train"} if params.per_class_in == "train" else {}),
              "rows_before": n, "rows_after": len(rows)}
    return rows, record
