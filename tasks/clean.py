"""clean: deduplicate, drop unlabeled rows, assign stable splits, fit and apply the transform.

    python -m tasks.clean             # what `dvc repro clean` runs

The raw snapshot is streamed in batches through an Arrow dataset, so a table
larger than memory is cleaned in three passes that each hold one batch (or
one column) at a time:

1. hash every row: exact duplicates are found across batches, and each row's
   split follows from the hash of its key (hashing.py), so adding rows never
   moves an existing row to another split;
2. fit the transform (transform.py) on the training rows, one column at a time;
3. apply it batch by batch and write the clean table.

The fitted transform is saved as JSON and applied unchanged at evaluation and
prediction time.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from tasks import transform as tf
from tasks.contract import kind_of, missing_mask
from tasks.errors import InputError, run_main
from tasks.hashing import assign_splits, row_hash
from tasks.params import Clean, load_params
from tasks.tables import SPLITS, atomic_path, model_schema, read_json, sha256_file, write_json

WORKERS = min(4, os.cpu_count() or 1)


def open_raw(raw_path: Path, manifest: dict) -> ds.Dataset:
    """The raw snapshot as a dataset, categorical columns read as dictionaries (hashed once per value)."""
    try:
        schema = pq.read_schema(raw_path)
    except FileNotFoundError:
        raise InputError(f"{raw_path}: raw snapshot not found; run ingest first") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{raw_path}: not a readable Parquet file ({e})") from None
    cats = [f.name for f in schema if kind_of(f, manifest.get("text_column")) == "category"]
    fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=cats))
    return ds.dataset(raw_path, format=fmt)


def batches(dataset: ds.Dataset, batch_rows: int):
    """The dataset's record batches in order, reading at most one batch ahead (memory stays flat)."""
    return dataset.to_batches(batch_size=batch_rows, batch_readahead=1, fragment_readahead=1)


def _sorted_classes(labels: pa.ChunkedArray) -> list[str]:
    """Distinct labels as strings, numeric labels in numeric order."""
    uniq = pc.unique(labels.drop_null())
    if pa.types.is_dictionary(uniq.type):
        uniq = uniq.dictionary_decode()
    order = pc.sort_indices(uniq)
    return pc.cast(uniq.take(order), pa.string()).to_pylist()


def scan(dataset: ds.Dataset, label: str, text: str | None, params: Clean) -> dict:
    """Pass 1: row hashes, key hashes, labels, and which rows a `drop` strategy removes."""
    names = dataset.schema.names
    keys = list(params.split.key_columns)
    unknown = [k for k in keys + list(params.missing_columns) if k not in names]
    if unknown:
        raise InputError(f"clean: unknown column(s) {unknown} in clean.split.key_columns or "
                         f"clean.missing_columns (columns: {', '.join(names[:12])})")
    kinds = {f.name: kind_of(f, text) for f in dataset.schema if f.name not in (label, text)}
    drop_cols = [c for c, kind in kinds.items() if tf.strategy_of(c, kind, params) == "drop"]
    def hash_batch(batch: pa.RecordBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h = row_hash(batch, names)
        gap = np.zeros(batch.num_rows, bool)
        for c in drop_cols:
            gap |= missing_mask(pa.chunked_array([batch.column(c)])).to_numpy()
        return h, row_hash(batch, keys) if keys else h, gap

    rows, key_hashes, gaps = zip(*[hash_batch(b) for b in batches(dataset, params.batch_rows)])  # >= 1 row
    return {"rows": np.concatenate(rows), "keys": np.concatenate(key_hashes), "incomplete": np.concatenate(gaps),
            "labels": dataset.to_table(columns=[label])[label]}


def select(scanned: dict, params: Clean, raw_path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rows kept (first of each duplicate, labeled, complete) and each row's split."""
    h, n = scanned["rows"], len(scanned["rows"])
    keep = np.zeros(n, bool)
    keep[np.unique(h, return_index=True)[1]] = True
    report = {"rows_in": n, "duplicates_dropped": int(n - keep.sum())}
    labeled = pc.is_valid(scanned["labels"]).to_numpy(zero_copy_only=False)
    report["unlabeled_dropped"] = int((keep & ~labeled).sum())
    keep &= labeled
    report["incomplete_dropped"] = int((keep & scanned["incomplete"]).sum())
    keep &= ~scanned["incomplete"]
    if not keep.any():
        raise InputError(f"{raw_path}: no rows left after dropping duplicate, unlabeled and incomplete rows")
    return keep, assign_splits(scanned["keys"], params.split), report


def check_split_labels(labels: pa.ChunkedArray, keep: np.ndarray, split: np.ndarray, raw_path: Path) -> list[str]:
    """The classes; every label in val or test must also be in train."""
    kept = labels.filter(pa.array(keep))
    sp = split[keep]
    per = {s: set(_sorted_classes(kept.filter(pa.array(sp == i)))) for i, s in enumerate(SPLITS)}
    problems = []
    for s in SPLITS:
        if not per[s]:
            problems.append(f"the {s} split has no rows")
        elif s != "train" and per[s] - per["train"]:
            problems.append(f"label value(s) {sorted(per[s] - per['train'])} are in {s} but in no training row")
    if problems:
        raise InputError(f"{raw_path}: cannot split: {'; '.join(problems)}; add rows of those classes, or "
                         f"change clean.split (fractions or seed)")
    return _sorted_classes(kept)


def fit(dataset: ds.Dataset, manifest: dict, train: np.ndarray, classes: list[str], params: Clean) -> dict:
    """Pass 2: the transform, fitted on training rows, one column in memory per thread."""
    label, text = manifest["label_column"], manifest.get("text_column")
    mask = pa.array(train)

    def fit_column(field: pa.Field) -> dict:
        col = dataset.to_table(columns=[field.name], batch_readahead=1)[field.name].filter(mask)
        if kind_of(field, text) == "number":
            return tf.fit_numeric(field.name, tf._numeric(col), params)
        return tf.fit_category(field.name, col, params)

    fields = [f for f in dataset.schema if f.name not in (label, text)]
    with ThreadPoolExecutor(WORKERS) as pool:  # numpy and Arrow release the GIL: columns fit side by side
        fitted = dict(zip([f.name for f in fields], pool.map(fit_column, fields)))
    numeric = [fitted[f.name] for f in fields if kind_of(f, text) == "number"]
    categorical = [fitted[f.name] for f in fields if kind_of(f, text) != "number"]
    t = {"numeric": tf.finish_scaling(numeric, params), "categorical": categorical,
         "label_column": label, "classes": classes, "text_column": text, "text": params.text.model_dump(),
         "image_shape": manifest.get("image_shape"), "data_version": manifest.get("version")}
    t["features"] = tf.feature_names(t)
    return t


def write_clean(dataset: ds.Dataset, t: dict, keep: np.ndarray, split: np.ndarray, out_path: Path,
                batch_rows: int) -> dict:
    """Pass 3: transform every kept row, batch by batch, into the clean table.

    One thread transforms the next batch while this one is written.
    """
    schema = model_schema(t["features"], t["image_shape"], t["text_column"])
    split_names = pa.array(SPLITS)
    missing = dict.fromkeys([c["name"] for c in t["numeric"] + t["categorical"]], 0)

    def transform(batch: pa.RecordBatch, start: int) -> pa.RecordBatch:
        m = keep[start:start + batch.num_rows]
        batch = batch.filter(pa.array(m))
        for name in missing:
            missing[name] += int(pc.sum(missing_mask(pa.chunked_array([batch.column(name)]))).as_py() or 0)
        arrays, text = tf.apply(batch, t)
        y = tf.label_codes(batch.column(t["label_column"]), t["classes"])
        cols = arrays + ([text] if text is not None else [])
        cols += [pa.array(y), split_names.take(pa.array(split[start:start + len(m)][m]))]
        return pa.RecordBatch.from_arrays(cols, schema=schema)

    with atomic_path(out_path) as tmp, ThreadPoolExecutor(1) as pool, pq.ParquetWriter(
            tmp, schema, compression="zstd", compression_level=1, use_dictionary=[schema.names[-1]]) as writer:
        pending, start = None, 0
        for batch in batches(dataset, batch_rows):
            job, start = pool.submit(transform, batch, start), start + batch.num_rows
            if pending is not None:
                writer.write_batch(pending.result())
            pending = job
        if pending is not None:
            writer.write_batch(pending.result())
    return {"missing_values_filled": sum(missing.values()), "missing_by_column": {k: v for k, v in missing.items()
                                                                                   if v}}


def clean(params: Clean, raw_path: Path, manifest_path: Path, out_path: Path, transform_path: Path,
          report_path: Path) -> dict:
    manifest = read_json(manifest_path, "ingest manifest")
    if sha256_file(raw_path) != manifest.get("sha256"):  # the boundary: only data that passed the contract
        raise InputError(f"{raw_path}: does not match the hash in {manifest_path}; rerun ingest")
    dataset = open_raw(raw_path, manifest)
    label = manifest["label_column"]
    scanned = scan(dataset, label, manifest.get("text_column"), params)
    keep, split, report = select(scanned, params, raw_path)
    classes = check_split_labels(scanned["labels"], keep, split, raw_path)
    t = fit(dataset, manifest, keep & (split == 0), classes, params)
    report |= write_clean(dataset, t, keep, split, out_path, params.batch_rows)
    write_json(transform_path, t)
    report |= {"rows_out": int(keep.sum()), "classes": len(classes), "features": len(t["features"]),
               "split_rows": {s: int((keep & (split == i)).sum()) for i, s in enumerate(SPLITS)}}
    write_json(report_path, report)
    return report


def main() -> None:
    def body():
        p = load_params()
        r = clean(p.clean, p.paths.raw, p.paths.raw_manifest, p.paths.clean, p.paths.transform,
                  p.paths.clean_report)
        print(f"clean: {r['rows_in']} rows in, {r['duplicates_dropped']} duplicates, {r['unlabeled_dropped']} "
              f"unlabeled and {r['incomplete_dropped']} incomplete dropped, {r['missing_values_filled']} values "
              f"filled, {r['rows_out']} rows out {r['split_rows']}, {r['features']} features")

    run_main(body)


if __name__ == "__main__":
    main()
