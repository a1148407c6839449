"""ingest: read a source into a versioned raw snapshot (Parquet + manifest).

    python -m tasks.ingest            # what `dvc repro ingest` runs

The source is a local CSV or Parquet file, or `pkg:<module>/<file>` for a file
shipped inside an installed package (the default: the UCI handwritten digits
CSV that scikit-learn ships). The snapshot is checked before it is written:
an empty file, a missing label column or non-numeric features stop the run
here, long before training, and the previous snapshot stays in place.
"""

from __future__ import annotations

import errno
import importlib.resources
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from tasks.errors import InputError, TransientIOError, run_main
from tasks.params import Ingest, load_params
from tasks.tables import sha256_file, write_json, write_table

# errno values that mean "the file is not there / not allowed", not "try again"
_PERMANENT = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM}


def resolve_source(source: str) -> Path:
    """A local path, or `pkg:module/relative/file` inside an installed package."""
    if source.startswith("pkg:"):
        module, _, rel = source[4:].partition("/")
        try:
            root = importlib.resources.files(module)
        except ModuleNotFoundError:
            raise InputError(f"ingest.source {source!r}: no installed package {module!r}") from None
        return Path(str(root.joinpath(rel)))
    return Path(source)


def _format_of(path: Path, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    suffixes = "".join(path.suffixes).lower()
    if ".parquet" in suffixes or suffixes.endswith(".pq"):
        return "parquet"
    if ".csv" in suffixes or ".tsv" in suffixes:
        return "csv"
    raise InputError(f"{path}: cannot tell the format from the name; set ingest.format")


def _read(path: Path, params: Ingest) -> pa.Table:
    fmt = _format_of(path, params.format)
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        opts = pacsv.ReadOptions(autogenerate_column_names=not params.header)
        table = pacsv.read_csv(path, read_options=opts)
    except pa.ArrowInvalid as e:
        msg = str(e).splitlines()[0]
        if "Empty CSV file" in msg:
            raise InputError(f"{path}: the file is empty, expected a header and data rows") from None
        raise InputError(f"{path}: cannot be read as {fmt} ({msg})") from None
    except OSError as e:
        if isinstance(e, FileNotFoundError) or e.errno in _PERMANENT:
            raise InputError(f"{path}: cannot open source ({e.strerror or e})") from None
        raise TransientIOError(f"{path}: {e}") from e
    if not params.header:  # x0..x{n-2} and the label last, as in the digits CSV
        n = table.num_columns
        table = table.rename_columns([f"x{i}" for i in range(n - 1)] + [params.label_column])
    return table


def check_raw(table: pa.Table, path: Path, params: Ingest) -> None:
    """Collect every problem of a raw table, then raise them together."""
    problems = []
    if table.num_rows == 0:
        problems.append("no data rows")
    repeated = sorted({c for c in table.column_names if table.column_names.count(c) > 1})
    if repeated:
        problems.append(f"column names appear more than once: {', '.join(repeated[:10])}")
    if params.label_column not in table.column_names:
        shown = ", ".join(table.column_names[:12]) + (" ..." if table.num_columns > 12 else "")
        problems.append(f"label column {params.label_column!r} not found (columns: {shown})")
    fields = [f for f in table.schema if f.name != params.label_column]
    features = [f.name for f in fields]
    if not features:
        problems.append("no feature columns besides the label")
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_null)
    bad = [f.name for f in fields if not any(is_type(f.type) for is_type in numeric)]
    if bad:
        problems.append(f"feature columns must be numeric, these are not: {', '.join(bad[:10])}")
    if params.image_shape and len(features) != params.image_shape[0] * params.image_shape[1]:
        h, w = params.image_shape
        problems.append(f"ingest.image_shape {h}x{w} needs {h * w} feature columns, found {len(features)}")
    if problems:
        raise InputError(f"{path}: " + "; ".join(problems))


def ingest(params: Ingest, raw_path: Path, manifest_path: Path) -> dict:
    """Snapshot the source into `raw_path`; write its manifest; return the manifest."""
    source = resolve_source(params.source)
    table = _read(source, params)
    check_raw(table, source, params)
    write_table(table, raw_path)
    manifest = {
        "source": params.source,
        "source_sha256": sha256_file(source),
        "rows": table.num_rows,
        "label_column": params.label_column,
        "image_shape": list(params.image_shape) if params.image_shape else None,
        "schema": {f.name: str(f.type) for f in table.schema},
        "sha256": sha256_file(raw_path),
    }
    write_json(manifest_path, manifest)
    return manifest


def main() -> None:
    def body():
        p = load_params()
        src = p.ingest.source
        if not src.startswith("pkg:") and not Path(src).resolve().is_relative_to(p.paths.sources.resolve()):
            print(f"ingest: warning: {src} is outside {p.paths.sources}/, so DVC will not rerun "
                  f"ingest when it changes; move it there", flush=True)
        m = ingest(p.ingest, p.paths.raw, p.paths.raw_manifest)
        print(f"ingest: {m['rows']} rows, {len(m['schema'])} columns from {m['source']} "
              f"-> {p.paths.raw} (sha256 {m['sha256'][:12]})")

    run_main(body)


if __name__ == "__main__":
    main()
