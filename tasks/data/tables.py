"""Files between stages: Parquet (or Arrow IPC) tables with a declared schema, JSON, hashes.

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
from typing import Collection, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.errors import InputError

LABEL = "label"  # the label column's name from clean on
SPLIT = "split"  # train / val / test, assigned by clean
SPLITS = ("train", "val", "test")
ARROW_SUFFIX = ".arrow"  # a table written as an Arrow IPC file rather than Parquet
IMAGE_SHAPE_KEY = b"image_shape"
TEXT_COLUMN_KEY = b"text_column"
TOKENS_KEY = b"token_vocab"  # > 0: the features are token ids (0 = padding) from a tokenizer of this size


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


ROW_GROUP_ROWS = 65_536  # a reader streaming the table holds one row group of each column at a time


def write_table(table: pa.Table, path: Path) -> None:
    """Parquet, atomically. LZ4 reads about twice as fast as zstd for some 10% more bytes, and each
    table here is read several times (clean alone makes three passes over the raw snapshot)."""
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="lz4", row_group_size=ROW_GROUP_ROWS)


@contextmanager
def table_writer(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter | pa.ipc.RecordBatchFileWriter]:
    """A writer of record batches into `path`, renamed into place when the block succeeds.

    A `.arrow` path gets an Arrow IPC file with LZ4-compressed buffers, written on all cores at close to
    memory speed: the clean table, written by one stage and read whole by the next, where Parquet's
    per-value encoding would take most of the stage's time. Any other path gets Parquet, as write_table.
    """
    with atomic_path(path) as tmp:
        if Path(path).suffix == ARROW_SUFFIX:
            with pa.ipc.new_file(str(tmp), schema, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
                yield writer
        else:
            with pq.ParquetWriter(tmp, schema, compression="lz4") as writer:
                yield writer


def read_table(path: Path) -> pa.Table:
    try:
        if Path(path).suffix == ARROW_SUFFIX:
            with pa.memory_map(str(path)) as source:
                return pa.ipc.open_file(source).read_all()
        return pq.read_table(path)
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise InputError(f"{path}: not a readable {'Arrow' if Path(path).suffix == ARROW_SUFFIX else 'Parquet'} "
                         f"file ({e})") from None


def model_schema(features: list[str], image_shape: tuple[int, int] | None, text_column: str | None = None,
                 flags: Collection[str] = (), token_vocab: int = 0, regression: bool = False) -> pa.Schema:
    """The schema of every table from clean on: float32 features, [normalised text,] label (int64 class, or
    float32 target), split.
    Features named in `flags` (one-hot columns of the clean table) are booleans: a bit, not four bytes."""
    fields = [pa.field(name, pa.bool_() if name in flags else pa.float32(), nullable=False) for name in features]
    if text_column:
        fields.append(pa.field(text_column, pa.string(), nullable=False))
    label = pa.float32() if regression else pa.int64()  # a standardised target, or a class index
    fields += [pa.field(LABEL, label, nullable=False), pa.field(SPLIT, pa.string(), nullable=False)]
    meta = {IMAGE_SHAPE_KEY: json.dumps(list(image_shape) if image_shape else None).encode(),
            TEXT_COLUMN_KEY: json.dumps(text_column).encode(), TOKENS_KEY: str(token_vocab).encode()}
    return pa.schema(fields, metadata=meta)


def text_column_of(schema: pa.Schema) -> str | None:
    return json.loads((schema.metadata or {}).get(TEXT_COLUMN_KEY, b"null"))


def is_regression(schema: pa.Schema) -> bool:
    return LABEL in schema.names and pa.types.is_floating(schema.field(LABEL).type)


def tokens_of(schema: pa.Schema) -> int:
    return int((schema.metadata or {}).get(TOKENS_KEY, b"0"))


def feature_names(schema: pa.Schema) -> list[str]:
    return [n for n in schema.names if n not in (LABEL, SPLIT, text_column_of(schema))]


def image_shape_of(schema: pa.Schema) -> tuple[int, int] | None:
    shape = json.loads((schema.metadata or {}).get(IMAGE_SHAPE_KEY, b"null"))
    return tuple(shape) if shape else None


def read_model_table(path: Path) -> pa.Table:
    """Read a table written from clean on and check it against model_schema."""
    table = read_table(path)
    flags = [f.name for f in table.schema if pa.types.is_boolean(f.type)]
    expected = model_schema(feature_names(table.schema), image_shape_of(table.schema), text_column_of(table.schema),
                            flags, tokens_of(table.schema), is_regression(table.schema))
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
