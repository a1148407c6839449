"""Files between stages: Parquet tables with a declared schema, JSON, hashes.

Every write goes to a temporary file beside the target and is renamed into
place, so a failed stage never leaves a half-written file where a good one was.
Every read checks the schema and names the file when something is off.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import InputError

LABEL = "label"  # the label column's name from clean on
SPLIT = "split"  # train / val / test, assigned by clean
SPLITS = ("train", "val", "test")
IMAGE_SHAPE_KEY = b"image_shape"
TEXT_COLUMN_KEY = b"text_column"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path that replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: {what} not found") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: {what} is not valid JSON ({e})") from None


def write_table(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable Parquet file ({e})") from None


def model_schema(features: list[str], image_shape: tuple[int, int] | None, text_column: str | None = None
                 ) -> pa.Schema:
    """The schema of every table from clean on: float32 features, [normalised text,] int64 label, split."""
    fields = [pa.field(name, pa.float32(), nullable=False) for name in features]
    if text_column:
        fields.append(pa.field(text_column, pa.string(), nullable=False))
    fields += [pa.field(LABEL, pa.int64(), nullable=False), pa.field(SPLIT, pa.string(), nullable=False)]
    meta = {IMAGE_SHAPE_KEY: json.dumps(list(image_shape) if image_shape else None).encode(),
            TEXT_COLUMN_KEY: json.dumps(text_column).encode()}
    return pa.schema(fields, metadata=meta)


def text_column_of(schema: pa.Schema) -> str | None:
    return json.loads((schema.metadata or {}).get(TEXT_COLUMN_KEY, b"null"))


def feature_names(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n not in (LABEL, SPLIT, text_column_of(schema))]


def image_shape_of(schema: pa.Schema) -> tuple[int, int] | None:
    shape = json.loads((schema.metadata or {}).get(IMAGE_SHAPE_KEY, b"null"))
    return tuple(shape) if shape else None


def read_model_table(path: Path) -> pa.Table:
    """Read a table written from clean on and check it against model_schema."""
    table = read_table(path)
    expected = model_schema(feature_names(table.schema), image_shape_of(table.schema), text_column_of(table.schema))
    if not table.schema.equals(expected, check_metadata=False):
        diff = [
            f"{f.name}: expected {f.type}{'' if f.nullable else ' not null'}"
            for f in expected
            if f.name not in table.schema.names or not table.schema.field(f.name).equals(f)
        ]
        raise InputError(f"{path}: schema differs from the pipeline's: {'; '.join(diff)}")
    if table.num_rows == 0:
        raise InputError(f"{path}: table has no rows")
    return table
