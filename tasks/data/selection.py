"""Which rows clean keeps and the split each gets, and what clean would refuse: one code for both stages.

    keep, report = kept_rows(row_hashes, labels, incomplete)         # clean's first pass, and the gate below
    problems = split_problems(labels, keep, split, regression)      # every split has rows; held-out labels in train
    violations = clean_refusals(table, ingest_params, clean_params, refused)  # at ingest, before the snapshot

Ingest is the single gate: a source it accepts goes through clean, augment,
train and evaluate without a data error. Some of clean's refusals depend on
clean's own params as much as on the data: the rows it drops (duplicates,
unlabeled rows, incomplete rows under `clean.missing: drop`), the split each
row's hash sends it to, and what it fits on the training rows (a fill value,
at most `clean.max_categories` categories). So ingest runs those same steps
(the functions clean runs, not a copy of them) on the table it holds, and
turns each refusal into a violation naming the column. Clean checks again: a
snapshot may be older than a change of clean's params.

A class needs rows in every split to be learnt and measured: with
`clean.split`'s fractions it needs at least ceil(1 / smaller fraction) rows
(kept ones, after duplicates) to expect one in each; fewer is refused, and so
is, exactly, a split the hashes leave empty or a held-out label no training
row has.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.data import transform
from tasks.data.contract import kind_of, unusable_mask, violation
from tasks.data.hashing import assign_splits, first_occurrences, row_hash
from tasks.data.tables import LABEL, SPLIT, SPLITS
from tasks.errors import InputError
from tasks.params import Clean, Ingest


def sorted_classes(labels: pa.ChunkedArray) -> list[str]:
    """Distinct labels as strings, numeric labels in numeric order."""
    uniq = pc.unique(labels.drop_null())
    if pa.types.is_dictionary(uniq.type):
        uniq = uniq.dictionary_decode()
    order = pc.sort_indices(uniq)
    return pc.cast(uniq.take(order), pa.string()).to_pylist()


def kept_rows(h: np.ndarray, labels: pa.ChunkedArray, incomplete: np.ndarray) -> tuple[np.ndarray, dict]:
    """Rows kept (the first of each duplicate, labeled, complete) and how many each rule dropped."""
    n, keep = len(h), first_occurrences(h)
    report = {"rows_in": n, "duplicates_dropped": int(n - keep.sum())}
    labeled = pc.invert(unusable_mask(labels)).to_numpy(zero_copy_only=False)  # NaN targets too
    report["unlabeled_dropped"] = int((keep & ~labeled).sum())
    keep &= labeled
    report["incomplete_dropped"] = int((keep & incomplete).sum())
    return keep & ~incomplete, report


def split_problems(labels: pa.ChunkedArray, keep: np.ndarray, split: np.ndarray, regression: bool) -> list[str]:
    """What clean refuses in a split: a split without rows; a val or test label that no training row has."""
    kept, sp = labels.filter(pa.array(keep)), split[keep]
    per = {s: set(sorted_classes(kept.filter(pa.array(sp == i)))) if not regression else
           ({"rows"} if (sp == i).any() else set()) for i, s in enumerate(SPLITS)}
    problems = []
    for s in SPLITS:
        if not per[s]:
            problems.append(f"the {s} split has no rows")
        elif s != "train" and per[s] - per["train"] and not regression:
            problems.append(f"label value(s) {sorted(per[s] - per['train'])} are in {s} but in no training row")
    return problems


def clean_refusals(table: pa.Table, params: Ingest, clean: Clean, refused: set = frozenset()) -> list[dict]:
    """Every refusal clean (and after it augment and train) would make of this table, as contract violations;
    the columns in `refused` (the contract's violations name them already) are not fitted again."""
    label, text, n = params.label_column, params.text_column, table.num_rows
    names, keys = table.column_names, list(clean.split.key_columns)
    unknown = [k for k in keys + list(clean.missing_columns) if k not in names]
    if unknown:
        return [violation("columns", k, n, "named by clean.split.key_columns or clean.missing_columns, but the "
                                           "source has no such column") for k in unknown]
    kinds = {f.name: kind_of(f, text) for f in table.schema if f.name not in (label, text)}
    incomplete = np.zeros(n, bool)
    for c, kind in kinds.items():
        if transform.strategy_of(c, kind, clean) == "drop":
            incomplete |= unusable_mask(table[c]).to_numpy(zero_copy_only=False)
    h = row_hash(table, names)
    keep, _ = kept_rows(h, table[label], incomplete)
    if not keep.any():
        return [violation("rows", None, n, "no row left once clean drops duplicate, unlabeled and incomplete "
                                           "(clean.missing: drop) rows")]
    split = assign_splits(row_hash(table, keys) if keys else h, clean.split)
    regression = params.task == "regression"
    out = [violation("split", label, int(keep.sum()), f"clean cannot split the rows: {p}; add rows, or change "
                                                      f"clean.split (fractions or seed)")
           for p in split_problems(table[label], keep, split, regression)]
    if label not in refused:
        out += _target(table[label], label, keep, split) if regression else _classes(table[label], label, keep, clean)
    return out + _fits(table, kinds, keep & (split == 0), clean, text, refused)


def _classes(labels: pa.ChunkedArray, label: str, keep: np.ndarray, clean: Clean) -> list[dict]:
    """At least two classes in the kept rows, each with rows enough to expect one in every split."""
    kept = labels.filter(pa.array(keep))
    counts = {str(c["values"]): c["counts"] for c in pc.value_counts(kept).to_pylist()}
    small_fraction = min(clean.split.val_fraction, clean.split.test_fraction)
    need = math.ceil(1 / small_fraction - 1e-9)
    small = {k: v for k, v in sorted(counts.items()) if v < need}
    out = []
    if len(counts) < 2 and pc.count_distinct(labels.filter(pc.invert(unusable_mask(labels)))).as_py() >= 2:
        out.append(violation("labels", label, int(keep.sum()), f"one class only ({list(counts)}) in the rows clean "
                                                               f"keeps: a classifier needs at least two"))
    if small:
        out.append(violation("balance", label, sum(small.values()), f"classes with fewer than {need} rows (kept, "
                             f"after duplicates): {small}; clean.split sends a row to val with p "
                             f"{clean.split.val_fraction} and to test with p {clean.split.test_fraction}, so a class "
                             f"needs 1/{small_fraction} = {need} rows to expect one in each split"))
    return out


def _target(labels: pa.ChunkedArray, label: str, keep: np.ndarray, split: np.ndarray) -> list[dict]:
    """A regression target that varies over the training rows (clean scales it by that spread)."""
    y = transform.as_float64(labels)[keep & (split == 0)]
    if len(np.unique(y[~np.isnan(y)])) < 2:
        return [violation("labels", label, len(y), "the target is the same in every training row: nothing to "
                                                  "learn; add rows, or change clean.split")]
    return []


def _fits(table: pa.Table, kinds: dict, train: np.ndarray, clean: Clean, text: str | None, refused: set
          ) -> list[dict]:
    """Clean's fit of every feature column on the training rows; its refusals; the features it would make."""
    out, numeric, categorical, mask = [], [], [], pa.array(train)
    for name, kind in kinds.items():
        if name in refused:
            continue
        col = table[name].filter(mask)
        try:
            if kind == "number":  # values beyond float32's range overflow its sums: the contract names them
                with np.errstate(over="ignore", invalid="ignore"):
                    numeric.append(transform.fit_numeric(name, transform.as_float64(col), clean))
            else:
                categorical.append(transform.fit_category(name, col, clean))
        except InputError as e:
            out.append(violation("clean", name, int(train.sum()), str(e).removeprefix(f"column {name!r}: ")))
    if out:
        return out
    features = transform.output_columns({"numeric": numeric, "categorical": categorical})
    taken = {LABEL, SPLIT} | ({text} if text else set())
    twice = sorted({f for f in features if features.count(f) > 1 or (f in taken and f not in kinds)})
    out += [violation("columns", f, table.num_rows, f"the feature {f!r} clean would make (one-hot columns are "
                                                    f"named column=value) clashes with another column; rename one")
            for f in twice]
    if not features and not text and not refused & set(kinds):
        out.append(violation("columns", None, table.num_rows, "no feature left once clean has encoded the columns "
                                                              "(a category column whose training rows are all "
                                                              "missing gives none)"))
    return out

