"""The replay buffer: a class-balanced (or version-balanced) reservoir of training rows, kept as data.

    table = build(parent_buffer, candidates(clean, rows, current), size, balance, seed)
    write(folder, table, record)          # buffer.parquet and buffer.json, byte-identical for the same inputs

The buffer of a data version is built from two things only: the parent's
buffer (every registered version carries one; the parent stage fetches it) and
this version's new training rows (clean's rows of the newest experience, split
train). Each row gets a priority, a 64-bit mix of its stable hash and
`continual.buffer.seed`; every class (or experience) gets an equal share of the
size (rows a class lacks go to the others), and keeps its rows of lowest
priority. The k lowest priorities of a set are a uniform sample of it, and the
k lowest of (the old k lowest plus the new rows) are the k lowest of all rows
seen, so the buffer is a reservoir sample of every training row the lineage
has had, yet built from the parent's buffer and the new rows alone, in any
order, with no generator state: the same seed and parent give the same bytes.

Hand-written because a buffer here is a versioned artifact (DVC tracks it, the
lineage records its hash, the next child starts from it), which the
continual-learning libraries' in-memory buffers (Avalanche's, for one) are not.
Only training rows enter it: a parent's buffer row that this data's split puts
in val or test is dropped (counted in buffer.json), never replayed.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.data.tables import LABEL, SPLIT, atomic_path, sha256_file, write_table
from tasks.errors import InputError
from tasks.files import BUFFER_RECORD, BUFFER_TABLE

TABLE, RECORD = BUFFER_TABLE, BUFFER_RECORD
ROW, EXPERIENCE = "row", "experience"  # the columns a buffer adds to the clean table's
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def priority(rows: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of each row hash and the seed: the reservoir's order, a function of the row alone."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(seed % 2**64) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def shares(counts: dict[int, int], size: int) -> dict[int, int]:
    """An equal share of `size` per group; what a group lacks goes to the others, and the rows the share does
    not divide go one each to the first groups (by group order) with rows to spare. The order matters: were
    the remainder given by count, a group's share would move when another group only gained rows, and a
    group whose share grows while it lacks rows is no longer the reservoir of its rows (see build)."""
    out, left, rest = {}, size, sorted(counts, key=lambda g: (counts[g], g))
    while rest and counts[rest[0]] <= left // len(rest):  # fewer rows than the level: every one kept
        group = rest.pop(0)
        out[group], left = counts[group], left - counts[group]
    if rest:  # every one of these has more rows than the level, so each can take one of the remainder
        level, extra = divmod(left, len(rest))
        out |= {group: level + (i < extra) for i, group in enumerate(sorted(rest))}
    return dict(sorted(out.items()))


def build(parent: pa.Table | None, new: pa.Table, size: int, balance: str, seed: int) -> pa.Table:
    """The buffer: the `size` rows of lowest priority in each class's (or experience's) share, among the
    parent's buffer rows and the new training rows; sorted by (group, priority)."""
    both = new if parent is None or not parent.num_rows else pa.concat_tables([parent, new.select(parent.schema.names)])
    if both.num_rows == 0:
        return both
    rows = both[ROW].to_numpy()
    _, first = np.unique(rows, return_index=True)
    both, rows = both.take(np.sort(first)), rows[np.sort(first)]  # a row once, wherever it came from
    group = both[LABEL if balance == "class" else EXPERIENCE].to_numpy()
    if group.dtype.kind == "f":  # a regression: one group
        group = np.zeros(len(group), np.int64)
    order = np.lexsort((priority(rows, seed), group))
    uniq, n = np.unique(group, return_counts=True)
    quota = shares({int(g): int(c) for g, c in zip(uniq, n)}, size)
    in_order = group[order]
    rank = np.arange(len(order)) - np.searchsorted(in_order, in_order, side="left")  # within its group
    kept = order[rank < np.array([quota[int(g)] for g in uniq])[np.searchsorted(uniq, in_order)]]
    return both.take(kept)


def candidates(clean: pa.Table, rows: pa.Table, current: int) -> pa.Table:
    """The clean table's training rows of the newest experience, with their hash and experience."""
    table = clean.append_column(ROW, rows["row"]).append_column(EXPERIENCE, rows["experience"])
    mask = pc.and_(pc.equal(table[SPLIT], "train"), pc.equal(table[EXPERIENCE], current))
    return table.filter(mask)


def carried(parent: pa.Table, schema: pa.Schema, rows: pa.Table, where: Path) -> tuple[pa.Table | None, int, str]:
    """The parent's buffer as this data sees it: none when its columns differ (another preprocessing);
    rows this split holds out dropped. (table, rows dropped, why none)."""
    if parent.schema.remove_metadata() != schema.remove_metadata():
        return None, 0, f"{where}: its columns differ from this clean table's (another preprocessing)"
    split = dict(zip(rows["row"].to_numpy().tolist(), rows["split"].to_numpy().tolist()))
    held_out = np.array([split.get(r, 0) != 0 for r in parent[ROW].to_numpy().tolist()], bool)
    return parent.filter(pa.array(~held_out)), int(held_out.sum()), ""


def read(folder: Path) -> pa.Table | None:
    path = folder / TABLE
    if not path.exists():
        return None
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"{path}: the replay buffer cannot be read ({e})") from None


def describe(table: pa.Table, classes: list[str]) -> dict:
    """Rows per class and per experience."""
    def counts(col: str, names=None) -> dict:
        if table.num_rows == 0 or (col == LABEL and pa.types.is_floating(table.schema.field(LABEL).type)):
            return {}
        values, n = np.unique(table[col].to_numpy(), return_counts=True)
        return {(names[int(v)] if names else str(int(v))): int(c) for v, c in zip(values, n)}
    return {"rows": table.num_rows, "per_class": counts(LABEL, classes), "per_experience": counts(EXPERIENCE)}


def write(folder: Path, table: pa.Table, record: dict) -> dict:
    """buffer.parquet, then buffer.json with its sha256: the same rows give the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    write_table(table, folder / TABLE)
    record = dict(record, sha256=sha256_file(folder / TABLE))
    with atomic_path(folder / RECORD) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record
