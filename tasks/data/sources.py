"""Reading a source into one Arrow table: files, folders, image folders, URLs.

    read_source(params)  ->  Source(table, sha256, files, where, skipped)
    decode_image(path, (h, w))  ->  h*w uint8 pixels, exactly as ingest stores an image (predict too)

A source is a local CSV / Parquet / JSON-lines file, a local folder of such
files (read in sorted order, so appending a file appends rows), a folder of
images with one subfolder per class, a file inside an installed package
(`pkg:<module>/<file>`), or a remote URL that fsspec opens (http(s)://, and
s3:// with the `s3` extra). A remote file is downloaded whole into a
temporary folder, retried on transient errors, and parsed only once complete,
so a failed or cut download never becomes a snapshot.

Rows are named as a person finds them (`Source.where`, read errors): a CSV
row by its line as an editor counts it (with a header, the first data row is
line 2), a JSON-lines row by its line, a Parquet row as "row N" (1-based), an
image by its file, and in a folder the file first. (An example row's line
assumes a line per row: a blank line or a quoted value over two lines shifts
it.) What an image folder holds besides class folders of images is skipped
and named in `Source.skipped`; hidden files and its README.md are ignored.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.resources
import json
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from tasks.errors import InputError, TransientIOError
from tasks.params import Ingest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
TABLE_SUFFIXES = {"csv": (".csv", ".tsv", ".csv.gz", ".tsv.gz"), "parquet": (".parquet", ".pq"),
                  "jsonl": (".jsonl", ".ndjson", ".json", ".jsonl.gz")}
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")
# errno values that mean "the file is not there / not allowed", not "try again"
_PERMANENT = {errno.ENOENT, errno.EISDIR, errno.ENOTDIR, errno.EACCES, errno.EPERM}
MAX_LISTED = 10  # bad files named in one error


@dataclass(frozen=True)
class Source:
    table: pa.Table
    sha256: str  # of the bytes read: a file, or every file of a folder in order
    files: int
    where: Callable[[int], str] | None = None  # how a person finds row i (0-based) of the table
    skipped: tuple[str, ...] = ()  # "path: why" of what an image folder held that is not read


def _where(parts: list[tuple[str, str, int]], header: bool) -> Callable[[int], str]:
    """where(i) of a table made of the (name, format, rows) parts in order: a CSV line (the header counted),
    a JSON line or a Parquet row, 1-based, after the file's name when there are several."""
    starts = np.cumsum([0] + [rows for *_, rows in parts])

    def where(i: int) -> str:
        k = int(np.searchsorted(starts, i, side="right")) - 1
        name, kind, _ = parts[k]
        j = i - int(starts[k]) + 1
        at = f"line {j + header}" if kind == "csv" else f"line {j}" if kind == "jsonl" else f"row {j}"
        return f"{name} {at}" if len(parts) > 1 else at
    return where


def is_remote(source: str) -> bool:
    return bool(_URL.match(source)) and not source.startswith("file://")


def resolve_local(source: str) -> Path:
    """A local path, or `pkg:module/relative/file` inside an installed package."""
    if source.startswith("pkg:"):
        module, _, rel = source[4:].partition("/")
        try:
            root = importlib.resources.files(module)
        except ModuleNotFoundError:
            raise InputError(f"ingest.source {source!r}: no installed package {module!r}") from None
        return Path(str(root.joinpath(rel)))
    return Path(source.removeprefix("file://"))


def _hash_files(paths: list[Path], root: Path | None = None) -> str:
    h = hashlib.sha256()
    for path in paths:
        if root is not None:  # a folder's hash covers names too: a renamed class is new data
            h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _table_format(name: str, fmt: str) -> str:
    if fmt not in ("auto", "images"):
        return fmt
    lower = name.lower()
    for kind, suffixes in TABLE_SUFFIXES.items():
        if lower.endswith(suffixes):
            return kind
    raise InputError(f"{name}: cannot tell the format from the name; set ingest.format "
                     f"(csv, parquet, jsonl or images)")


def _open(path: Path, mode: str = "rb", encoding: str | None = None):
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    return opener(path, mode, encoding=encoding, **({"newline": ""} if "t" in mode else {}))


def _first_line(path: Path) -> str:
    with _open(path) as f:
        return f.readline(4096).decode("utf-8", "replace")


def _ragged_line(path: Path, params: Ingest) -> None:
    """A CSV row of more or fewer values than the first row: name its line, as an editor counts it (Arrow's
    message names none)."""
    import csv

    try:
        with _open(path, "rt", params.encoding) as f:
            reader, width, end = csv.reader(f, delimiter=params.delimiter), None, 0
            for row in reader:
                start, end = end + 1, reader.line_num
                if row and width is None:
                    width, first = len(row), start
                elif row and len(row) != width:
                    raise InputError(f"{path}: line {start} has {len(row)} value(s), line {first} has {width}: a "
                                     f"stray or missing {params.delimiter!r}, or a quote left open?")
    except (UnicodeDecodeError, csv.Error):
        return  # Arrow's own message says what it can


def _json_kind(value) -> str:
    """The JSON type of a value, as Arrow names it in a message."""
    kinds = ((bool, "boolean"), ((int, float), "number"), (str, "string"), (list, "list"), (dict, "object"))
    return next(name for types, name in kinds if isinstance(value, types))


def _double(text: str) -> float:
    """A JSON number as Arrow reads it: one beyond float64 is an error there, not inf."""
    value = float(text)
    if not np.isfinite(value):
        raise ValueError(f"the number {text} is too big for a double")
    return value


def _bad_json_line(path: Path, msg: str) -> None:
    """The line behind Arrow's JSON error, whose "row N" counts from 0 within a block of the file: the first
    line that is no JSON object, or, for a type change of a column, the first line where its type differs."""
    found = re.search(r"Column\(/([^)/]*)\) changed from", msg)
    column, first = found.group(1) if found else None, None
    try:
        with _open(path, "rt", "utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line, parse_float=_double)
                except ValueError as e:
                    raise InputError(f"{path}: line {n} is not valid JSON ({e})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}: line {n} holds a JSON {_json_kind(row)}, not an object")
                if column is None or row.get(column) is None:
                    continue
                kind = _json_kind(row[column])
                first = first or (kind, n)
                if kind != first[0]:
                    raise InputError(f"{path}: column {column!r}: mixed types: a {first[0]} on line {first[1]}, "
                                     f"a {kind} on line {n}")
    except UnicodeDecodeError:
        return


def _other_delimiter(path: Path, params: Ingest) -> None:
    """A CSV read with the wrong delimiter: name the likely one."""
    line = _first_line(path)
    found = [d for d in (";", "\t", "|", ",") if d != params.delimiter and d in line]
    if found:
        raise InputError(f"{path}: the lines do not split into columns on {params.delimiter!r}, but the first "
                         f"line contains {found[0]!r}; set ingest.delimiter to {found[0]!r} "
                         f"(it is {params.delimiter!r})")


def _read_csv(path: Path, params: Ingest) -> pa.Table:
    opts = pacsv.ReadOptions(autogenerate_column_names=not params.header, encoding=params.encoding)
    try:
        table = pacsv.read_csv(path, read_options=opts, parse_options=pacsv.ParseOptions(delimiter=params.delimiter),
                               convert_options=pacsv.ConvertOptions(strings_can_be_null=True))  # "" is missing
    except pa.ArrowInvalid as e:
        if "Expected" in str(e) and "columns" in str(e):
            _other_delimiter(path, params)
            _ragged_line(path, params)
        raise
    try:
        names = table.column_names
    except UnicodeDecodeError:
        raise InputError(f"{path}: the header is not valid {params.encoding} text; "
                         f"set ingest.encoding, e.g. latin-1") from None
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        raise InputError(f"{path}: " + ", ".join(f"column {b!r}" for b in binary) + f": not valid "
                         f"{params.encoding} text; set ingest.encoding, e.g. latin-1")
    if len(names) == 1:  # the whole line landed in one column: another delimiter?
        _other_delimiter(path, params)
    if not params.header:  # x0..x{n-2} and the label last, as in the digits CSV
        n = table.num_columns
        table = table.rename_columns([f"x{i}" for i in range(n - 1)] + [params.label_column])
    return table


def _read_file(path: Path, fmt: str, params: Ingest) -> pa.Table:
    fmt = _table_format(path.name, fmt)
    try:
        if fmt == "parquet":
            return pq.read_table(path)
        if fmt == "jsonl":
            return pajson.read_json(path)
        return _read_csv(path, params)
    except (pa.ArrowInvalid, pa.ArrowTypeError, UnicodeDecodeError) as e:
        msg = str(e).splitlines()[0]
        if "Empty CSV file" in msg or (fmt == "jsonl" and path.stat().st_size == 0):
            raise InputError(f"{path}: the file is empty, expected a header and data rows") from None
        if "UTF8" in msg or "UTF-8" in msg or "utf-8" in msg or isinstance(e, UnicodeDecodeError):
            raise InputError(f"{path}: text is not valid {params.encoding} ({msg}); "
                             f"set ingest.encoding, e.g. latin-1") from None
        if fmt == "jsonl":
            _bad_json_line(path, msg)
        if "changed from" in msg or "conversion error" in msg:
            raise InputError(f"{path}: a column holds values of mixed types ({msg})") from None
        raise InputError(f"{path}: cannot be read as {fmt} ({msg})") from None
    except OSError as e:
        if isinstance(e, FileNotFoundError) or e.errno in _PERMANENT:
            raise InputError(f"{path}: cannot open source ({e.strerror or e})") from None
        if fmt == "parquet":  # pyarrow raises OSError for corrupt or truncated Parquet
            raise InputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
        raise TransientIOError(f"{path}: {e}") from e


class BadImage(Exception):
    """An image file that ingest, and so predict, does not take; the message says why, not which file."""


def decode_image(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """The pixels of one image file as ingest stores them and predict feeds them: 8-bit grayscale (mode L)
    of exactly `shape` (height, width), neither converted nor resized, as h*w uint8 values 0-255, row-major."""
    from PIL import Image, UnidentifiedImageError

    h, w = shape
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode != "L" or im.size != (w, h):
                raise BadImage(f"{im.size[1]}x{im.size[0]} {im.mode}, expected {h}x{w} L (8-bit grayscale)")
            return np.asarray(im, dtype=np.uint8).reshape(-1)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"not a readable image ({type(e).__name__}: {e})") from None


def decode_images(files: list[Path], shape: tuple[int, int], shown=str, where: str = "") -> np.ndarray:
    """(len(files), h*w) uint8 pixels, one row per file (decode_image); every file is checked, and the bad
    ones, named by `shown(path)`, are listed in one error that starts with `where`."""
    h, w = shape
    pixels, bad = np.empty((len(files), h * w), np.uint8), []
    for i, path in enumerate(files):
        try:
            pixels[i] = decode_image(path, shape)
        except BadImage as e:
            bad.append(f"{shown(path)}: {e}")
    if bad:
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise InputError(f"{where}{len(bad)} bad image file(s){more}:\n  - " + "\n  - ".join(bad[:MAX_LISTED]))
    return pixels


def _image_files(root: Path) -> tuple[list[Path], list[str]]:
    """An image folder's images (class folder / image file, sorted), and what else it holds as "path: why"."""
    files, skipped = [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or len(rel.parts) > 2 or rel == Path("README.md"):
            continue  # hidden; inside a folder named below; the folder's own README
        image = path.suffix.lower() in IMAGE_SUFFIXES
        if path.is_dir():
            if len(rel.parts) == 2:
                skipped.append(f"{path}: a folder inside class folder {rel.parts[0]!r}, not read")
            elif not any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.iterdir() if not f.name.startswith(".")):
                skipped.append(f"{path}: an empty class folder (no image files), so no class {path.name!r}")
        elif len(rel.parts) == 1:
            skipped.append(f"{path}: a file beside the class folders, in none of them")
        elif image:
            files.append(path)
        else:
            skipped.append(f"{path}: not an image file (expected {', '.join(sorted(IMAGE_SUFFIXES))})")
    return files, skipped


def _read_images(root: Path, params: Ingest) -> tuple[pa.Table, list[Path], Callable, list[str]]:
    """One row per image: pixels x0..x{h*w-1} (uint8, row-major) and the class folder's name."""
    if params.image_shape is None:
        raise InputError(f"{root}: an image folder needs ingest.image_shape [height, width]")
    h, w = params.image_shape
    files, skipped = _image_files(root)
    if not files:
        raise InputError(f"{root}: no images found; expected one subfolder per class holding "
                         f"{', '.join(sorted(IMAGE_SUFFIXES))} files")
    pixels = decode_images(files, (h, w), shown=lambda p: p.relative_to(root), where=f"{root}: ")
    cols = {f"x{j}": pa.array(pixels[:, j]) for j in range(h * w)}
    cols[params.label_column] = pa.array([p.parent.name for p in files], pa.string())
    return pa.table(cols), files, lambda i: str(files[i].relative_to(root)), skipped


def _read_folder(root: Path, params: Ingest) -> tuple[pa.Table, list[Path], Callable, list[str]]:
    entries = [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".") and p.name != "README.md"]
    has_images = any(p.suffix.lower() in IMAGE_SUFFIXES for p in entries)
    if params.format == "images" or (params.format == "auto" and has_images):
        return _read_images(root, params)
    files = sorted(entries)
    if not files:
        raise InputError(f"{root}: the folder is empty; expected data files (CSV, Parquet, JSON lines) "
                         f"or one subfolder of images per class")
    tables = [_read_file(f, params.format, params) for f in files]
    parts = [(str(f.relative_to(root)), _table_format(f.name, params.format), t.num_rows)
             for f, t in zip(files, tables)]
    try:
        return pa.concat_tables(tables, promote_options="permissive"), files, _where(parts, params.header), []
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise InputError(f"{root}: the files do not share one schema ({e})") from None


def _transient(e: BaseException) -> bool:
    """Worth another try: timeouts, refused or dropped connections, HTTP 5xx and 429."""
    status = getattr(e, "status", None) or getattr(e, "code", None)
    if isinstance(status, int):
        return status >= 500 or status == 429
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError, InputError)):
        return False
    return isinstance(e, (OSError, TimeoutError, ConnectionError)) or type(e).__module__.startswith("aiohttp")


def fetch(url: str, dest: Path, params: Ingest, log=print) -> Path:
    """Download `url` into the folder `dest`, retrying transient errors; the local copy."""
    import fsspec
    from tenacity import RetryError, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

    def attempt_once() -> Path:
        options = {"timeout": params.timeout_s} if url.startswith("http") else {}
        fs, path = fsspec.core.url_to_fs(url, **(options | dict(params.storage_options)))
        local = dest / (Path(urllib.parse.urlsplit(path).path).name or "download")  # no ?query or #fragment
        local.unlink(missing_ok=True)
        fs.get_file(path, str(local))
        return local

    retrying = Retrying(stop=stop_after_attempt(params.retries + 1), reraise=False,
                        wait=wait_exponential(multiplier=0.5, max=10), retry=retry_if_exception(_transient),
                        before_sleep=lambda s: log(f"ingest: {url}: attempt {s.attempt_number} failed "
                                                   f"({s.outcome.exception()!r}); retrying"))
    try:
        return retrying(attempt_once)
    except RetryError as e:
        cause = e.last_attempt.exception()
        n = params.retries + 1
        raise TransientIOError(f"{url}: still failing after {n} attempt{'s' if n > 1 else ''} ({cause!r})") from None
    except FileNotFoundError:
        raise InputError(f"{url}: not found (HTTP 404 or no such object); check ingest.source") from None
    except Exception as e:  # permanent: 4xx, bad credentials, unknown protocol
        raise InputError(f"{url}: cannot be read ({type(e).__name__}: {e})") from None


def read_source(params: Ingest, log=print) -> Source:
    if is_remote(params.source):
        with tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
            local = fetch(params.source, Path(tmp), params, log)
            return _one_file(local, params)
    path = resolve_local(params.source)
    if path.is_dir():
        table, files, where, skipped = _read_folder(path, params)
        return Source(table, _hash_files(files, path), len(files), where, tuple(skipped))
    if not path.exists():
        raise InputError(f"{path}: ingest.source does not exist")
    return _one_file(path, params)


def _one_file(path: Path, params: Ingest) -> Source:
    """A source of one file; its hash is of the bytes alone, so a renamed file is the same data."""
    table = _read_file(path, params.format, params)
    where = _where([("", _table_format(path.name, params.format), table.num_rows)], params.header)
    return Source(table, _hash_files([path]), 1, where)
