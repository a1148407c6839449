"""clean: deduplicate, drop unlabeled rows, assign stable splits, fit and apply the transform.

    python -m tasks.clean             # what `dvc repro clean` runs

The raw snapshot (Parquet, in row groups of 65,536 rows) is streamed in
batches of `clean.batch_rows` rows, so a table larger than memory is cleaned
in three passes that each hold a few batches (or columns) at a time, and keep
both cores busy:

1. hash every row: exact duplicates are found across batches, and each row's
   split follows from the hash of its key (hashing.py), so adding rows never
   moves an existing row to another split;
2. fit the transform (transform.py) on the training rows, a column per thread;
3. apply it batch by batch (a batch per thread) and write the clean table, an
   Arrow IPC file: Parquet's per-value encoding would take most of the stage.

The fitted transform is saved as JSON and applied unchanged at evaluation and
prediction time. The report (reports/clean.json, a DVC metric) counts what was
done: rows dropped by reason, values filled (missing ones, and inf or -inf
where the contract allowed them), clipped to the `clean.outliers` quantiles
and saturated at the transform's limit, each per column.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.data import inherit, transform
from tasks.data.contract import kind_of, missing_mask, non_finite_mask, unusable_mask
from tasks.data.hashing import assign_splits, row_hash
from tasks.data.selection import kept_rows, sorted_classes, split_problems
from tasks.data.tables import SPLITS, model_schema, read_json, sha256_file, table_writer, write_json
from tasks.errors import InputError, run_main
from tasks.params import Clean, load_params

WORKERS = min(4, os.cpu_count() or 1)


class Raw:
    """The raw snapshot, read a column or a batch at a time; categorical columns come as dictionaries
    (each distinct value hashed and looked up once). Each read opens its own reader, so threads can
    read columns side by side, and a batch is decoded only when it is asked for: an Arrow dataset
    scanner decodes ahead of a slow consumer and would hold most of the table at once."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        try:
            self.schema = pq.read_schema(path)
        except FileNotFoundError:
            raise InputError(f"{path}: raw snapshot not found; run ingest first") from None
        except (pa.ArrowInvalid, OSError) as e:
            raise InputError(f"{path}: not a readable Parquet file ({e})") from None
        self.categories = [f.name for f in self.schema if kind_of(f, manifest.get("text_column")) == "category"]

    def _file(self) -> pq.ParquetFile:
        return pq.ParquetFile(self.path, read_dictionary=self.categories, pre_buffer=False)

    def column(self, name: str) -> pa.ChunkedArray:
        return self._file().read(columns=[name], use_threads=False).column(0)

    def batches(self, rows: int) -> Iterator[tuple[int, pa.RecordBatch]]:
        """(index of the batch's first row, batch), in order."""
        start = 0
        for batch in self._file().iter_batches(batch_size=rows):
            yield start, batch
            start += batch.num_rows


def ahead(fn: Callable, items: Iterable, workers: int = WORKERS) -> Iterator:
    """fn(*item) for each item, in order, computed on `workers` threads ahead of the caller: reading (and
    the caller's own work, such as writing) overlaps the computation, and at most workers + 1 items are
    in memory. numpy and Arrow release the GIL, so the threads really run side by side."""
    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Future] = deque()
        for item in items:
            pending.append(pool.submit(fn, *item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def scan(raw: Raw, label: str, text: str | None, params: Clean) -> dict:
    """Pass 1: row hashes, key hashes, labels, and which rows a `drop` strategy removes."""
    names = raw.schema.names
    keys = list(params.split.key_columns)
    unknown = [k for k in keys + list(params.missing_columns) if k not in names]
    if unknown:
        raise InputError(f"clean: unknown column(s) {unknown} in clean.split.key_columns or "
                         f"clean.missing_columns (columns: {', '.join(names[:12])})")
    kinds = {f.name: kind_of(f, text) for f in raw.schema if f.name not in (label, text)}
    drop_cols = [c for c, kind in kinds.items() if transform.strategy_of(c, kind, params) == "drop"]

    def hash_batch(_: int, batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array]:
        h = row_hash(batch, names)
        gap = np.zeros(batch.num_rows, bool)
        for c in drop_cols:
            gap |= unusable_mask(pa.chunked_array([batch.column(c)])).to_numpy(zero_copy_only=False)
        return h, row_hash(batch, keys) if keys else h, gap, batch.column(label)

    rows, key_hashes, gaps, labels = zip(*ahead(hash_batch, raw.batches(params.batch_rows)))  # >= 1 row
    return {"rows": np.concatenate(rows), "keys": np.concatenate(key_hashes), "incomplete": np.concatenate(gaps),
            "labels": pa.chunked_array(labels)}


def select(scanned: dict, params: Clean, raw_path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows kept (first of each duplicate, labeled, complete) and each row's split."""
    keep, report = kept_rows(scanned["rows"], scanned["labels"], scanned["incomplete"])
    if not keep.any():
        raise InputError(f"{raw_path}: no rows left after dropping duplicate, unlabeled and incomplete rows")
    return keep, assign_splits(scanned["keys"], params.split), report


def check_split_labels(labels: pa.ChunkedArray, keep: np.ndarray, split: np.ndarray, raw_path: Path,
                       regression: bool = False) -> list[str]:
    """The classes (none for a regression); every split has rows, every label in val or test is in train."""
    problems = split_problems(labels, keep, split, regression)
    if problems:
        raise InputError(f"{raw_path}: cannot split: {'; '.join(problems)}; add rows of those classes, or "
                         f"change clean.split (fractions or seed)")
    return [] if regression else sorted_classes(labels.filter(pa.array(keep)))


def fit(raw: Raw, manifest: dict, keep: np.ndarray, train: np.ndarray, classes: list[str], params: Clean,
        stats: bool = True) -> tuple[dict, dict]:
    """Pass 2: the transform, fitted on training rows, one column in memory per thread; and how many
    values of the kept rows are missing, and how many inf or -inf (filled alike), per column. With `stats`
    False (a warm start brings the parent's fits) the columns are only counted, and named with their kind."""
    label, text = manifest["label_column"], manifest.get("text_column")
    mask = pa.array(train)

    def kept(m: pa.ChunkedArray) -> int:
        return int(np.count_nonzero(m.to_numpy(zero_copy_only=False) & keep))

    def fit_column(field: pa.Field) -> tuple[dict, int, int]:
        col = raw.column(field.name)
        gaps = kept(missing_mask(col)), kept(non_finite_mask(col))
        if not stats:
            return {"name": field.name}, *gaps
        if kind_of(field, text) == "number":
            return transform.fit_numeric(field.name, transform.as_float64(col.filter(mask)), params), *gaps
        return transform.fit_category(field.name, col.filter(mask), params), *gaps

    fields = [f for f in raw.schema if f.name not in (label, text)]
    with ThreadPoolExecutor(WORKERS) as pool:  # numpy and Arrow release the GIL: columns fit side by side
        fitted = dict(zip([f.name for f in fields], pool.map(fit_column, fields)))
    numeric = [fitted[f.name][0] for f in fields if kind_of(f, text) == "number"]
    categorical = [fitted[f.name][0] for f in fields if kind_of(f, text) != "number"]
    t = {"numeric": transform.finish_scaling(numeric, params) if stats else numeric, "categorical": categorical,
         "label_column": label, "classes": classes, "task": manifest.get("task", "classification"),
         "text_column": text, "text": params.text.model_dump(),
         "image_shape": manifest.get("image_shape"), "data_version": manifest.get("version")}
    t["features"] = transform.output_columns(t) if stats else None
    if t["task"] == "regression":  # the model learns the standardised target; evaluate scales it back
        y = transform.as_float64(raw.column(label).filter(mask))
        t["target"] = {"center": float(np.nanmean(y)), "scale": float(np.nanstd(y)) or 1.0}
    missing = {name: m for name, (_, m, _) in fitted.items() if m}
    inf = {name: k for name, (_, _, k) in fitted.items() if k}
    return t, {"missing_values_filled": sum(missing.values()), "missing_by_column": missing,
               "non_finite_filled": sum(inf.values()), "non_finite_by_column": inf}


def write_clean(raw: Raw, t: dict, keep: np.ndarray, split: np.ndarray, out_path: Path, batch_rows: int) -> dict:
    """Pass 3: transform every kept row, batch by batch, into the clean table; the next batch is
    transformed while this one is written. Returns what was clipped (clean.outliers) and saturated, per
    column (transform.apply)."""
    schema = model_schema(t["features"], t["image_shape"], t["text_column"], flags=set(transform.flag_names(t)),
                          regression=t["task"] == "regression")
    split_names = pa.array(SPLITS)

    def clean_batch(start: int, batch: pa.RecordBatch) -> tuple[pa.RecordBatch, dict]:
        m, counts = keep[start:start + batch.num_rows], {}  # counts: this batch's own, summed below
        arrays, text = transform.apply(batch, t, rows=m, counts=counts)
        y = transform.label_values(batch.column(t["label_column"]).filter(pa.array(m)), t, counts)
        cols = arrays + ([text] if text is not None else [])
        cols += [pa.array(y), split_names.take(pa.array(split[start:start + len(m)][m]))]
        return pa.RecordBatch.from_arrays(cols, schema=schema), counts

    total = {"clipped": {}, "saturated": {}}
    with table_writer(out_path, schema) as writer:
        for out, counts in ahead(clean_batch, raw.batches(batch_rows)):
            writer.write_batch(out)
            for kind, per in counts.items():
                for name, k in per.items():
                    total[kind][name] = total[kind].get(name, 0) + k
    return {"values_clipped": sum(total["clipped"].values()), "clipped_by_column": total["clipped"],
            "values_saturated": sum(total["saturated"].values()), "saturated_by_column": total["saturated"]}


def inherited(t: dict, scanned: dict, keep: np.ndarray, split: np.ndarray, parent: Path | None, head: str,
              leak: str, raw_path: Path) -> dict:
    """A warm start's transform: the parent's (fetched by the parent stage), checked against this data, and
    no test row of this data among the parent's training rows (train.init.leak)."""
    if parent is None or not (parent / "transform.json").exists():
        return t  # from scratch, or a parent file with no preprocessing: the child's own fit
    t = inherit.adopt(read_json(parent / "transform.json", "the parent's transform"), t, head, str(raw_path))
    if (parent / "rows.parquet").exists():
        n = inherit.leaks(inherit.read_rows(parent / "rows.parquet"), scanned["rows"][keep], split[keep])
        if n:
            msg = (f"{raw_path}: {n} row(s) of the test split were in the parent's training split, so the test "
                   f"would score rows the parent learned; use the parent's clean.split (seed and fractions)")
            if leak == "refuse":
                raise InputError(msg + ", or set train.init.leak: warn to go on")
            print(f"clean: warning: {msg}", flush=True)
        t["leak_check"] = {"test_rows_in_parent_training": n}
    else:
        print(f"clean: warning: the parent records no row hashes (registered before they were kept), so "
              f"{raw_path}'s test split is not checked against its training rows", flush=True)
    return t


def declared_classes(found: list[str], params: Clean, raw_path: Path, label: str) -> list[str]:
    """The classes of the output layer: clean.classes in its order when set (every label must be one of
    them), else those the data has."""
    if params.classes is None or not found:
        return found
    declared = [str(c) for c in params.classes]
    unknown = [c for c in found if c not in declared]
    if unknown:
        raise InputError(f"{raw_path}: label(s) {unknown[:10]} of column {label!r} are not in clean.classes "
                         f"{declared[:20]}: add them, or leave those rows out (ingest.labels)")
    return declared


def experiences(hashes: np.ndarray, parent: Path | None, data_version: str | None) -> tuple[np.ndarray, list]:
    """Each kept row's experience along the parent lineage (inherit.assign_experiences)."""
    rows_file = parent / "rows.parquet" if parent is not None else None
    if rows_file is None or not rows_file.exists():
        return inherit.assign_experiences(None, [], hashes, data_version)
    rows = inherit.read_rows(rows_file)
    return inherit.assign_experiences(rows, inherit.experiences_of(rows, rows_file), hashes, data_version)


def clean(params: Clean, raw_path: Path, manifest_path: Path, out_path: Path, transform_path: Path,
          report_path: Path, rows_path: Path | None = None, parent: Path | None = None, head: str = "keep",
          leak: str = "refuse") -> dict:
    """The clean table, its transform and report (and rows_path: each kept row's hash and split). With a
    `parent` folder holding a transform (a warm start), the parent's transform is applied instead of the
    one fitted here (head: keep or reset; leak: refuse or warn, train.init)."""
    manifest = read_json(manifest_path, "ingest manifest")
    label = manifest["label_column"]
    with ThreadPoolExecutor(1) as pool:
        digest = pool.submit(sha256_file, raw_path)  # hashed beside the first pass
        try:
            scanned = scan(Raw(raw_path, manifest), label, manifest.get("text_column"), params)
        finally:  # the boundary: only data that passed the contract (a mismatch explains any scan error)
            if digest.result() != manifest.get("sha256"):
                raise InputError(f"{raw_path}: does not match the hash in {manifest_path}; rerun ingest")
    raw = Raw(raw_path, manifest)
    keep, split, report = select(scanned, params, raw_path)
    regression = manifest.get("task") == "regression"
    classes = declared_classes(check_split_labels(scanned["labels"], keep, split, raw_path, regression), params,
                               raw_path, label)
    pa.default_memory_pool().release_unused()  # each pass starts from what the data needs, not the last peak
    stats = parent is None or not (parent / "transform.json").exists()  # else the parent's fits, not new ones
    t, filled = fit(raw, manifest, keep, keep & (split == 0), classes, params, stats)
    t = inherited(t, scanned, keep, split, parent, head, leak, raw_path)
    pa.default_memory_pool().release_unused()
    report |= filled | write_clean(raw, t, keep, split, out_path, params.batch_rows)
    write_json(transform_path, t)
    if rows_path is not None:
        experience, listed = experiences(scanned["rows"][keep], parent, manifest.get("version"))
        inherit.write_rows(rows_path, scanned["rows"][keep], split[keep], experience, listed)
        report["experiences"] = {str(e["experience"]): int((experience == e["experience"]).sum()) for e in listed}
    report |= {"rows_out": int(keep.sum()), "classes": len(classes), "features": len(t["features"]),
               "split_rows": {s: int((keep & (split == i)).sum()) for i, s in enumerate(SPLITS)}}
    write_json(report_path, report)
    return report


def main() -> None:
    def body():
        p = load_params()
        inherit.fetched(p.paths.parent, p.train.init.from_)  # the parent the params name, or none
        r = clean(p.clean, p.paths.raw, p.paths.raw_manifest, p.paths.clean, p.paths.transform,
                  p.paths.clean_report, p.paths.rows, p.paths.parent, p.train.init.head, p.train.init.leak)
        print(f"clean: {r['rows_in']} rows in, {r['duplicates_dropped']} duplicates, {r['unlabeled_dropped']} "
              f"unlabeled and {r['incomplete_dropped']} incomplete dropped, {r['missing_values_filled']} missing and "
              f"{r['non_finite_filled']} inf values filled, {r['values_clipped']} clipped, {r['rows_out']} rows out "
              f"{r['split_rows']}, {r['features']} features")

    run_main(body)


if __name__ == "__main__":
    main()
