"""clean: deduplicate, drop unlabeled rows, fill gaps, assign splits, scale.

    python -m tasks.clean             # what `dvc repro clean` runs

The split is assigned here (seeded and stratified by label) because the
statistics used to fill missing values and to scale features must be fitted
on the training rows only; augment then writes the three split files. The
fitted statistics are saved as a transform (JSON) that evaluation and
prediction apply unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.model_selection import train_test_split

from tasks.errors import InputError, run_main
from tasks.params import Clean, Split, load_params
from tasks.tables import SPLITS, model_schema, read_json, read_table, write_json, write_table


def dedupe(x: np.ndarray, labels: pa.Array) -> np.ndarray:
    """Indices of the first occurrence of each distinct (features, label) row, in order."""
    codes = pc.dictionary_encode(labels).indices.to_numpy(zero_copy_only=False)
    rows = np.column_stack([x, np.nan_to_num(codes.astype(np.float64), nan=-1.0)])
    rows = np.ascontiguousarray(rows)
    keys = rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))).ravel()
    _, first = np.unique(keys, return_index=True)
    return np.sort(first)


def assign_splits(y: np.ndarray, params: Split) -> np.ndarray:
    """A seeded, stratified train/val/test assignment, one string per row."""
    idx = np.arange(len(y))
    held_out = params.val_fraction + params.test_fraction
    try:
        train, rest = train_test_split(idx, test_size=held_out, stratify=y, random_state=params.seed)
        val, test = train_test_split(
            rest, test_size=params.test_fraction / held_out, stratify=y[rest], random_state=params.seed
        )
    except ValueError as e:
        counts = dict(zip(*np.unique(y, return_counts=True)))
        raise InputError(f"cannot split stratified by label ({e}); rows per class: {counts}") from None
    split = np.empty(len(y), dtype=object)
    split[train], split[val], split[test] = SPLITS
    return split


def fit_transform(x: np.ndarray, train: np.ndarray, params: Clean, features: list[str]) -> dict:
    """Fit fill values and scaling on the training rows; return the transform."""
    xt = x[train]
    all_missing = [features[j] for j in np.flatnonzero(np.isnan(xt).all(axis=0))]
    if all_missing and params.missing != "drop":
        raise InputError(f"columns with no value in any training row: {', '.join(all_missing[:10])}")
    fill = np.nanmedian(xt, axis=0) if params.missing == "median" else np.nanmean(xt, axis=0)
    xt = np.where(np.isnan(xt), fill, xt)
    axis = 0 if params.per_column else None
    if params.scaling == "standard":
        center, scale = xt.mean(axis=axis), xt.std(axis=axis)
    elif params.scaling == "minmax":
        center, scale = xt.min(axis=axis), xt.max(axis=axis) - xt.min(axis=axis)
    else:
        center, scale = np.zeros(x.shape[1]), np.ones(x.shape[1])
    center = np.broadcast_to(center, x.shape[1])
    scale = np.where(np.broadcast_to(scale, x.shape[1]) > 0, scale, 1.0)  # constant columns
    return {"features": features, "fill": fill.tolist(), "center": center.tolist(),
            "scale": scale.tolist(), "missing": params.missing, "scaling": params.scaling}


def apply_transform(x: np.ndarray, transform: dict) -> np.ndarray:
    """Fill and scale raw features exactly as at training time (also for prediction)."""
    fill, center, scale = (np.asarray(transform[k]) for k in ("fill", "center", "scale"))
    return ((np.where(np.isnan(x), fill, x) - center) / scale).astype(np.float32)


def clean(params: Clean, raw_path: Path, manifest_path: Path,
          out_path: Path, transform_path: Path, report_path: Path) -> dict:
    manifest = read_json(manifest_path, "ingest manifest")
    table = read_table(raw_path)
    label_col = manifest["label_column"]
    if label_col not in table.column_names:
        raise InputError(f"{raw_path}: label column {label_col!r} not found")
    features = [c for c in table.column_names if c != label_col]
    x = np.column_stack([table[c].cast(pa.float64()).to_numpy(zero_copy_only=False) for c in features])
    labels = table[label_col].combine_chunks()
    report = {"rows_in": table.num_rows}

    keep = dedupe(x, labels)
    report["duplicates_dropped"] = table.num_rows - len(keep)
    keep = keep[pc.is_valid(labels.take(keep)).to_numpy(zero_copy_only=False)]
    report["unlabeled_dropped"] = table.num_rows - report["duplicates_dropped"] - len(keep)
    if params.missing == "drop":
        complete = ~np.isnan(x[keep]).any(axis=1)
        report["incomplete_dropped"] = int((~complete).sum())
        keep = keep[complete]
    report["missing_values_filled"] = int(np.isnan(x[keep]).sum())
    if len(keep) == 0:
        raise InputError(f"{raw_path}: no rows left after dropping duplicate, unlabeled "
                         f"and (with clean.missing: drop) incomplete rows")

    x, labels = x[keep], labels.take(keep)
    classes = pc.unique(labels).sort().to_pylist()
    y = pc.index_in(labels, value_set=pa.array(classes)).to_numpy(zero_copy_only=False).astype(np.int64)
    split = assign_splits(y, params.split)
    transform = fit_transform(x, split == "train", params, features)
    transform |= {"classes": classes, "label_column": label_col, "image_shape": manifest["image_shape"]}
    xs = apply_transform(x, transform)

    schema = model_schema(features, manifest["image_shape"])
    columns = [pa.array(xs[:, j]) for j in range(len(features))] + [pa.array(y), pa.array(split, pa.string())]
    write_table(pa.Table.from_arrays(columns, schema=schema), out_path)
    write_json(transform_path, transform)
    report |= {"rows_out": len(y), "classes": len(classes),
               "split_rows": {s: int((split == s).sum()) for s in SPLITS}}
    write_json(report_path, report)
    return report


def main() -> None:
    def body():
        p = load_params()
        r = clean(p.clean, p.paths.raw, p.paths.raw_manifest,
                  p.paths.clean, p.paths.transform, p.paths.clean_report)
        print(f"clean: {r['rows_in']} rows in, {r['duplicates_dropped']} duplicates and "
              f"{r['unlabeled_dropped']} unlabeled dropped, {r['missing_values_filled']} values "
              f"filled, {r['rows_out']} rows out {r['split_rows']}")

    run_main(body)


if __name__ == "__main__":
    main()
