"""predict: raw input through a registered model and its saved preprocessing, into Parquet, in batches.

    python -m tasks.predict digits@prod data/new.csv -o predictions.parquet
    python -m tasks.predict digits@v0.0.3 photos/ more/7.png -o predictions.parquet   # a model of images
    python -m tasks.predict digits@prod new.csv -o out.parquet --repo ../other-clone --batch-rows 4096

    from tasks.loading import load_model
    from tasks.predict import predict_files
    predict_files(load_model("digits@prod"), [Path("new.csv")], Path("out.parquet"))

Input is read the way ingest read the version's own source (its ingest params are in its lineage):
a CSV (header, delimiter and encoding as then; without a header, the columns in the source's order,
with or without the label last), Parquet or JSON lines with the source's columns; for a model trained
on an image folder, image files or folders of them, decoded as ingest decoded the training images
(tasks.data.sources.decode_image: 8-bit grayscale, the training image shape, no conversion or resizing). Rows
stream through in batches of --batch-rows: the version's fitted transform (and tokenizer), the model,
one Parquet row group per batch. The output has a row per input row: `source` (the file), `row` (its
index there), `prediction` (the class name, or a regression's value in the target's units) and, for
classes, `probability` (of the predicted class).
"""

from __future__ import annotations

import argparse
import contextlib
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tasks.data.sources import IMAGE_SUFFIXES, _first_line, _table_format, decode_images
from tasks.data.tables import table_writer
from tasks.errors import InputError, run_main
from tasks.loading import Loaded, Preprocessing, load_model

DEFAULT_BATCH_ROWS = 8192


def output_schema(regression: bool) -> pa.Schema:
    fields = [pa.field("source", pa.string(), nullable=False), pa.field("row", pa.int64(), nullable=False)]
    if regression:
        return pa.schema(fields + [pa.field("prediction", pa.float64(), nullable=False)])
    return pa.schema(fields + [pa.field("prediction", pa.string(), nullable=False),
                               pa.field("probability", pa.float32(), nullable=False)])


def _types(prep: Preprocessing) -> dict[str, pa.DataType]:
    out = {}
    for name, alias in prep.columns.items():
        try:
            out[name] = pa.type_for_alias(alias)
        except ValueError:  # a type without an alias: left to the reader
            pass
    return out


def _csv(path: Path, prep: Preprocessing) -> Iterator[pa.RecordBatch]:
    ing, names = prep.ingest, list(prep.columns)
    read = pacsv.ReadOptions(encoding=ing.get("encoding", "utf8"), block_size=1 << 22)
    if not ing.get("header", True):  # columns by position, as ingest named them
        label = ing.get("label_column", "label")
        n = len(_first_line(path).rstrip("\r\n").split(ing.get("delimiter", ",")))
        if n not in (len(names), len(names) - 1):
            raise InputError(f"{path}: {n} columns in the first line; the model's source (no header) had "
                             f"{len(names)}, the last one the label {label!r}: give {len(names) - 1} or {len(names)}")
        read.column_names = names[:n]
    try:
        reader = pacsv.open_csv(path, read_options=read,
                                parse_options=pacsv.ParseOptions(delimiter=ing.get("delimiter", ",")),
                                convert_options=pacsv.ConvertOptions(column_types=_types(prep),
                                                                     strings_can_be_null=True))
        yield from reader
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        where = _where(path, ing, read.column_names, str(e)) if isinstance(e, pa.ArrowInvalid) else None
        raise InputError(where or f"{path}: cannot be read as the model's source was ({str(e).splitlines()[0]}); "
                         f"expected columns {', '.join(names[:8])}... of types {_types(prep)}") from None


# pyarrow names a bad value or row by the column's position and the text alone
BAD_VALUE = re.compile(r"In CSV column #(\d+): CSV conversion error to (\S+): invalid value '(.*)'", re.S)
BAD_ROW = re.compile(r"CSV parse error: Expected (\d+) columns, got (\d+)")


def _where(path: Path, ing: dict, given_names: list[str], message: str) -> str | None:
    """pyarrow's error about a value or a row, with the column's name and the file's 1-based line (the
    header counted), found by reading the file once more with Python's csv module; None for another error."""
    with contextlib.closing(_csv_rows(path, ing)) as rows:
        return _located(path, given_names or next(rows, (0, []))[1], rows, message)  # a header: the first record


def _located(path: Path, names: list[str], rows: Iterator[tuple[int, list[str]]], message: str) -> str | None:
    if m := BAD_VALUE.search(message):
        col, kind, value = int(m[1]), m[2], m[3]
        line = next((n for n, fields in rows if col < len(fields) and fields[col] == value), None)
        name = names[col] if col < len(names) else f"#{col + 1}"
        return (f"{path}: {f'line {line}, ' if line else ''}column {name!r}: {value!r} is not a valid {kind}, "
                f"the type the model's source had in that column")
    if m := BAD_ROW.search(message):
        expected, got = int(m[1]), int(m[2])
        line = next((n for n, fields in rows if len(fields) == got), None)
        return (f"{path}: {f'line {line}: ' if line else ''}{got} values where the header has {expected} "
                f"({', '.join(names[:8])}{'...' if len(names) > 8 else ''})")
    return None


JSON_CHANGED = re.compile(r"Column\(/(.+?)\) changed from (\w+) to (\w+) in row \d+")  # the row: in its block
JSON_KINDS = {"string": str, "number": (int, float), "boolean": bool, "object": dict, "array": list}


def _jsonl_where(path: Path, message: str) -> str | None:
    """pyarrow's "Column(/x1) changed from number to string", with the file's 1-based line where it first does."""
    m = JSON_CHANGED.search(message)
    if not m or m[3] not in JSON_KINDS:
        return None
    col, was, kind = m[1], m[2], JSON_KINDS[m[3]]
    with open(path, encoding="utf8", errors="replace") as f:
        line = next((n for n, text in enumerate(f, 1) if text.strip() and _kind_of(text, col, kind)), None)
    return f"{path}: {f'line {line}, ' if line else ''}column {col!r}: a {m[3]} where earlier lines have a {was}"


def _kind_of(text: str, col: str, kind) -> bool:
    import json

    try:
        value = json.loads(text).get(col)
    except (ValueError, AttributeError):
        return False
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _csv_rows(path: Path, ing: dict) -> Iterator[tuple[int, list[str]]]:
    """(the 1-based line a record starts on, its fields) of a CSV file, as ingest's params read it."""
    import csv
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding=ing.get("encoding", "utf8"), errors="replace", newline="") as f:
        reader, start = csv.reader(f, delimiter=ing.get("delimiter", ",")), 1
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1


def table_batches(path: Path, prep: Preprocessing, batch_rows: int) -> Iterator[pa.RecordBatch]:
    fmt = _table_format(path.name, prep.ingest.get("format", "auto"))
    try:
        if fmt == "parquet":
            source = pq.ParquetFile(path).iter_batches(batch_size=batch_rows)
        elif fmt == "jsonl":
            source = pajson.open_json(path)
        else:
            source = _csv(path, prep)
        checked = False
        for batch in source:
            if not checked:  # the file's columns, once: every batch of a file has the same schema
                missing = [c for c in prep.required() if c not in batch.schema.names]
                if missing:
                    raise InputError(f"{path}: missing column(s) {missing[:10]} that the model's preprocessing "
                                     f"needs (expected the source's columns: {', '.join(list(prep.columns)[:12])})")
                checked = True
            for start in range(0, batch.num_rows, batch_rows):
                yield batch.slice(start, batch_rows)
    except FileNotFoundError:
        raise InputError(f"{path}: input file not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        where = _jsonl_where(path, str(e)) if fmt == "jsonl" and isinstance(e, pa.ArrowInvalid) else None
        raise InputError(where or f"{path}: not a readable {fmt} file ({str(e).splitlines()[0]})") from None


def image_batches(files: list[Path], prep: Preprocessing, batch_rows: int) -> Iterator[tuple[list, pa.RecordBatch]]:
    """Pixels x0..x{h*w-1} (uint8, row-major), decoded as ingest decoded the training images; every file checked."""
    h, w = prep.ingest["image_shape"]
    for start in range(0, len(files), batch_rows):
        chunk = files[start:start + batch_rows]
        pixels = decode_images(chunk, (h, w))
        yield [str(p) for p in chunk], pa.RecordBatch.from_arrays(  # named as ingest names image pixels
            [pa.array(pixels[:, j]) for j in range(h * w)], names=[f"x{j}" for j in range(h * w)])


def _images_in(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    return [path]


def batches(inputs: list[Path], prep: Preprocessing, batch_rows: int
            ) -> Iterator[tuple[list | str, int, pa.RecordBatch]]:
    """(source name(s), index of the first row in its source, raw batch) over every input."""
    for path in inputs:
        path = Path(path)
        if not path.exists():
            raise InputError(f"{path}: input not found")
        image = path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES
        if image and prep.kind != "images":
            raise InputError(f"{path}: images given, but the model was trained on a table source "
                             f"({prep.ingest.get('source')}); give a CSV, Parquet or JSON-lines file with its columns")
        if image:
            files = _images_in(path)
            if not files:
                raise InputError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the folder")
            start = 0
            for names, batch in image_batches(files, prep, batch_rows):
                yield names, start, batch
                start += batch.num_rows
        else:
            start = 0
            for batch in table_batches(path, prep, batch_rows):
                yield str(path), start, batch
                start += batch.num_rows


def predict_files(model: Loaded, inputs: list[Path], out: Path, batch_rows: int = DEFAULT_BATCH_ROWS) -> dict:
    """Predictions of `model` for every row of `inputs`, written to the Parquet file `out`."""
    from tqdm import tqdm

    if batch_rows < 1:
        raise InputError(f"--batch-rows {batch_rows}: expected at least 1")
    if Path(out).suffix != ".parquet":
        raise InputError(f"{out}: the output is Parquet; name it *.parquet")
    regression = model.preprocessing.transform.get("task") == "regression"
    schema, rows = output_schema(regression), 0
    with table_writer(Path(out), schema) as writer, tqdm(desc=f"predict {model.version}", unit="rows") as bar:
        for source, start, batch in batches(inputs, model.preprocessing, batch_rows):
            n = batch.num_rows
            if n == 0:
                continue
            p = model.predict(batch)
            names = source if isinstance(source, list) else [source] * n
            cols = [pa.array(names, pa.string()), pa.array(np.arange(start, start + n)),
                    pa.array(p["prediction"], schema.field("prediction").type)]
            if not regression:
                cols.append(pa.array(p["probability"], pa.float32()))
            writer.write_batch(pa.RecordBatch.from_arrays(cols, schema=schema))
            rows += n
            bar.update(n)
        if rows == 0:
            raise InputError(f"no rows to predict in {', '.join(map(str, inputs))}")
    return {"version": str(model.version), "rows": rows, "output": str(out)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tasks.predict", description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", help="NAME@VERSION, NAME@STAGE or NAME@latest, e.g. digits@prod")
    ap.add_argument("inputs", nargs="+", type=Path, help="CSV / Parquet / JSON-lines files, or images and folders")
    ap.add_argument("-o", "--output", type=Path, required=True, help="the Parquet file to write")
    ap.add_argument("--batch-rows", type=int, default=DEFAULT_BATCH_ROWS)
    ap.add_argument("--repo", default=".", help="the git/DVC repository holding the registry (default: here)")
    args = ap.parse_args(argv)

    def body():
        s = predict_files(load_model(args.spec, args.repo), args.inputs, args.output, args.batch_rows)
        print(f"predict: {args.spec} ({s['version']}): {s['rows']} rows -> {s['output']}")

    run_main(body)


if __name__ == "__main__":
    main()
