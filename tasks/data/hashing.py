"""Stable 64-bit row hashes, and the train/val/test split they decide.

A row's hash depends only on its own values (numbers by value, so 1 and 1.0
agree; an integer beyond 2**53, which float64 cannot hold exactly, by its own
64 bits, so distinct ids stay distinct; strings by their UTF-8 bytes), never on its position, its batch or
the other rows. So duplicates are found across batches, and a row's split
(`assign_splits`) never changes when rows are added to the data: a test set
stays a test set across data versions. Each class is cut by the same hash
thresholds, so every class is split by the configured fractions in
expectation (exact stratification would move rows whenever data is added).
Collisions of distinct rows are possible in principle (about n^2 / 2^65:
one in ten million for a million rows).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.params import Split

_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_NULL = np.uint64(0x6E756C6C6E756C6C)  # one fixed value for every missing cell
_NAN_BITS = np.float64("nan").view(np.uint64)
_BIG = np.uint64(0x626967696E743634)  # salts the bits of an integer beyond 2**53
_EXACT = 2**53  # float64 holds every integer up to this exactly


def mix(h: np.ndarray, inplace: bool = False) -> np.ndarray:
    """splitmix64's finaliser: every input bit moves every output bit (uint64 arithmetic wraps).
    In place, a column costs one scratch array rather than a new array per step."""
    out = h if inplace else h.copy()
    tmp = np.empty_like(out)
    with np.errstate(over="ignore"):
        for shift, mult in ((30, _M1), (27, _M2), (31, None)):
            np.right_shift(out, np.uint64(shift), out=tmp)
            out ^= tmp
            if mult is not None:
                out *= mult
    return out


def _string_hash(values: pa.Array) -> np.ndarray:
    """One hash per distinct string (hashed once each), spread to the rows."""
    if not pa.types.is_dictionary(values.type):
        values = pc.dictionary_encode(values)
    words = values.dictionary.to_pylist()
    table = np.fromiter((int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little")
                         for w in words), np.uint64, len(words))
    idx = values.indices
    out = table[pc.fill_null(idx, 0).to_numpy(zero_copy_only=False)] if len(words) else np.zeros(len(idx), np.uint64)
    if idx.null_count:
        out[pc.is_null(idx).to_numpy(zero_copy_only=False)] = _NULL
    return out


def column_hash(col: pa.Array | pa.ChunkedArray) -> np.ndarray:
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type.value_type if pa.types.is_dictionary(col.type) else col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return _string_hash(col)
    x = pc.cast(col, pa.float64(), safe=False).to_numpy(zero_copy_only=False)  # nulls: NaN; ints past 2**53 rounded
    x = x + 0.0  # a copy of our own, and -0.0 + 0.0 == +0.0
    bits = x.view(np.uint64)
    np.copyto(bits, _NAN_BITS, where=np.isnan(x))  # one NaN, whatever its payload
    if pa.types.is_int64(t) or pa.types.is_uint64(t):
        ints = pc.fill_null(col, 0).to_numpy(zero_copy_only=False)
        big = (ints > _EXACT) | (ints < -_EXACT) if pa.types.is_int64(t) else ints > _EXACT
        bits[big] = ints.view(np.uint64)[big] ^ _BIG
    if col.null_count:
        bits[pc.is_null(col).to_numpy(zero_copy_only=False)] = _NULL
    return mix(bits, inplace=True)


def row_hash(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> np.ndarray:
    """One uint64 per row over `columns` (in this order)."""
    h = np.zeros(batch.num_rows, np.uint64)
    with np.errstate(over="ignore"):
        for i, name in enumerate(columns):
            c = column_hash(batch.column(name))
            c += _GOLDEN * np.uint64(i + 1)
            h ^= c
            mix(h, inplace=True)
    return h


def assign_splits(key_hash: np.ndarray, params: Split) -> np.ndarray:
    """0 = train, 1 = val, 2 = test, from each row's key hash and the seed alone."""
    salt = mix(np.array([params.seed % 2**64], np.uint64))
    u = (mix(key_hash ^ salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u < params.test_fraction, 2, np.where(u < params.test_fraction + params.val_fraction, 1, 0)
                    ).astype(np.int8)


def first_occurrences(h: np.ndarray) -> np.ndarray:
    """True at the first row of each distinct hash (np.unique(h, return_index=True) would say the same,
    but its stable sort costs about twice this one). Sorted, equal hashes sit side by side; only rows in
    such runs, a few percent, need their original order sorted out."""
    order = np.argsort(h)
    sorted_h = h[order]
    same = sorted_h[1:] == sorted_h[:-1]
    keep = np.ones(len(h), bool)
    if not same.any():
        return keep
    in_run = np.zeros(len(h), bool)
    in_run[1:] |= same
    in_run[:-1] |= same
    rows = np.sort(order[in_run])  # every row that has a twin, in table order
    keep[rows] = False
    keep[rows[np.unique(h[rows], return_index=True)[1]]] = True
    return keep
