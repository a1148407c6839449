"""ingest.stream: a continual-learning stream made of one source, each experience a new data version of it.

    cut = stream(table, ingest_params)   # cut.rows (source rows kept), cut.table, cut.experience, cut.record
    cut.record | {"rows": counts(cut.experience, upto)}   # what the manifest says of the stream

Ingest applies it after `ingest.labels` and before `ingest.per_class` and the
contract, so the snapshot, its data version and the contract report describe
experiences 0..`upto` of the stream. Version k holds every row of version k-1
byte for byte plus experience k's rows, in source order: a row's experience,
and what is done to it, depend on that row and the params alone (never on its
position, on the other rows or on `upto`), so clean's hash split (a row's
split is a function of its values, tasks/data/hashing.py) never moves an
earlier row, and every version is a new data version.

- class_incremental: the sorted distinct labels are cut into `experiences`
  consecutive groups of equal size (the ten digits in five: {0,1}, {2,3}, ...);
  experience j holds the rows whose label is in group j, unchanged. A class
  count that `experiences` does not divide, or that is below it, is refused.
  Rows without a label belong to no class, so to no experience: left out.
- domain_incremental: experience j holds the rows whose hash (all columns,
  salted by `seed`) falls in the j-th of `experiences` equal ranges, about
  1/experiences of the rows each; experience 0 is the source rows unchanged.
  Experience j's images (ingest.image_shape: every column but the label is a
  pixel, row-major) are rotated by j * rotation_degrees degrees, counter-
  clockwise as shown (scipy.ndimage.rotate: bilinear, edges extended; a
  missing pixel spreads to its neighbours), then every numeric feature column
  (integer or float) gets Gaussian noise of std j * noise_std in the source's
  units, drawn by a generator seeded by (seed, j, the row's hash): equal rows
  get equal noise and stay repeats of each other. About 30 us a drifted row.
  Boolean, category and text feature columns are left as they are (noise
  means nothing there), and the label is never touched. The numeric feature
  columns are written as float64 in every version, experience 0's values
  exactly the source's, so every version has one schema (an integer beyond
  2**53 would be rounded: keep ids out of a drifted source).

Hand-written because no library makes versioned incremental streams of a
table: Avalanche and Continuum build experiences of a data set in memory, as
tensors for their own training loops, not data versions whose earlier rows
stay byte-identical. With `ingest.per_class` the budget samples each class of
the stream's rows: class_incremental stays cumulative (a class's sample
depends on its rows alone), domain_incremental does not (an experience's new
rows of a class may push earlier ones out of its sample).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks.data.contract import as_float, kind_of, unusable_mask
from tasks.data.hashing import mix, row_hash
from tasks.errors import InputError
from tasks.params import Ingest, Stream

_STREAM = np.uint64(0x73747265616D5F78)  # "stream_x": the experience's salt is never the split's or the sample's


@dataclass(frozen=True)
class Cut:
    """What a stream keeps of a table: `rows` (indices, source order), `table` (those rows, drifted),
    `experience` (each kept row's), `record` (the params it was cut by, for the manifest)."""

    rows: np.ndarray
    table: pa.Table
    experience: np.ndarray
    record: dict


def counts(experience: np.ndarray, upto: int) -> list[int]:
    """Rows of each experience 0..upto."""
    return np.bincount(experience, minlength=upto + 1)[: upto + 1].tolist()


def stream(table: pa.Table, params: Ingest) -> Cut:
    """The rows of experiences 0..params.stream.upto of `table` (kind none: the table as it is)."""
    s = params.stream
    if s.kind == "class_incremental":
        experience, groups = _class_experiences(table, params)
        record = {"classes": groups}
    elif s.kind == "domain_incremental":
        h = row_hash(table, table.column_names)
        experience = domain_experiences(h, s)
        record = {"rotation_degrees": s.rotation_degrees, "noise_std": s.noise_std, "seed": s.seed}
    else:
        return Cut(np.arange(table.num_rows), table, np.zeros(table.num_rows, np.int64), {"kind": "none"})
    rows = np.flatnonzero((experience >= 0) & (experience <= s.upto))
    out = table.take(pa.array(rows, pa.int64()))
    if s.kind == "domain_incremental":
        out = _drift(out, h[rows], experience[rows], params)
    record = {"kind": s.kind, "experiences": s.experiences, "upto": s.upto} | record
    return Cut(rows, out, experience[rows], record)


def _shown(v):
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _class_experiences(table: pa.Table, params: Ingest) -> tuple[np.ndarray, list[list]]:
    """Each row's experience (-1: no label) and the classes of every experience."""
    label, e = params.label_column, params.stream.experiences
    if label not in table.column_names:
        raise InputError(f"ingest.stream.kind class_incremental: label column {label!r} not in the source "
                         f"(columns: {', '.join(table.column_names[:12])}); set ingest.label_column")
    kind = kind_of(table.schema.field(label), None)
    if kind is None:
        raise InputError(f"ingest.stream.kind class_incremental: label column {label!r} holds "
                         f"{table.schema.field(label).type}, not classes")
    col = table[label]
    values = pc.add(as_float(col), 0.0) if kind == "number" else pc.cast(col, pa.string())  # -0.0 is 0.0
    values = pc.if_else(unusable_mask(col), pa.scalar(None, values.type), values)
    classes = sorted(pc.unique(values.drop_null()).to_pylist())
    n = len(classes)
    if n < e or n % e:
        fits = [k for k in range(2, n + 1) if n % k == 0]
        raise InputError(f"ingest.stream.experiences: {e} experiences cannot share the {n} classes of label column "
                         f"{label!r} equally ({[_shown(c) for c in classes][:30]}); class_incremental needs a "
                         f"class count it divides: {fits or 'none for fewer than two classes'}")
    index = pc.index_in(values, value_set=pa.array(classes, values.type))
    experience = pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    size = n // e
    experience = np.where(experience >= 0, experience // size, -1)
    return experience, [[_shown(c) for c in classes[j * size:(j + 1) * size]] for j in range(e)]


def domain_experiences(h: np.ndarray, s: Stream) -> np.ndarray:
    """Each row's experience from its hash and the seed alone: the j-th of `experiences` equal ranges."""
    salt = mix(np.array([s.seed % 2**64], np.uint64) ^ _STREAM)
    u = (mix(h ^ salt) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.minimum((u * s.experiences).astype(np.int64), s.experiences - 1)


def _numeric(field: pa.Field) -> bool:
    return pa.types.is_integer(field.type) or pa.types.is_floating(field.type)


def _features(table: pa.Table, params: Ingest) -> list[str]:
    """The columns drift changes: the numeric features; with a rotation, every pixel column, checked."""
    label = params.label_column
    features = [f for f in table.schema if f.name != label]
    if params.stream.rotation_degrees == 0 or params.image_shape is None:
        return [f.name for f in features if f.name != params.text_column and _numeric(f)]
    h, w = params.image_shape
    other = [f"{f.name} ({f.type})" for f in features if not _numeric(f)]
    if len(features) != h * w or other:
        raise InputError(f"ingest.stream.rotation_degrees: rotating needs ingest.image_shape {h}x{w}'s {h * w} "
                         f"numeric pixel columns besides the label, found {len(features)} columns"
                         + (f", not numbers: {', '.join(other[:5])}" if other else ""))
    return [f.name for f in features]


def _noise(h: np.ndarray, seed: int, j: int, m: int) -> np.ndarray:
    """(rows, m) standard normal draws, each row's from a generator seeded by (seed, j, its hash) alone."""
    out = np.empty((len(h), m))
    for i, x in enumerate(h.tolist()):
        out[i] = np.random.default_rng([seed % 2**64, j, x]).standard_normal(m)
    return out


def _drift(table: pa.Table, h: np.ndarray, experience: np.ndarray, params: Ingest) -> pa.Table:
    """Experience j's rows rotated by j * rotation_degrees and noised by j * noise_std; numeric features float64."""
    from scipy import ndimage  # only a drifted stream needs it (a dependency of scikit-learn)

    s, names = params.stream, _features(table, params)
    if not names:
        return table
    x = np.column_stack([as_float(table[c]).to_numpy(zero_copy_only=False) for c in names])  # null: NaN
    null = np.column_stack([pc.is_null(table[c]).to_numpy(zero_copy_only=False) for c in names])
    for j in range(1, s.upto + 1):
        rows = np.flatnonzero(experience == j)
        if not len(rows):
            continue
        if s.rotation_degrees and params.image_shape:
            images = x[rows].reshape(len(rows), *params.image_shape)
            x[rows] = ndimage.rotate(images, j * s.rotation_degrees, axes=(1, 2), reshape=False, order=1,
                                     mode="nearest").reshape(len(rows), -1)
        if s.noise_std:
            x[rows] += j * s.noise_std * _noise(h[rows], s.seed, j, len(names))
    for k, name in enumerate(names):
        i = table.schema.get_field_index(name)
        table = table.set_column(i, pa.field(name, pa.float64()), pa.array(x[:, k], pa.float64(), mask=null[:, k]))
    return table
