"""A child's data under its parent's preprocessing, and the leak check between the two.

    record = fetched(Path("parent_model"), spec)           # parent.json, checked to be train.init.from's
    t = adopt(parent_t, child_t, head, where)         # clean: the parent's fitted transform, the child's labels
    leaked = leaks(parent_rows, child_hashes, test)   # row hashes of the child's test split the parent trained on
    write_rows(path, hashes, split)                   # clean: each kept row's hash and split, for later children

Hand-written because the rules are the pipeline's own: a warm-started model
only means what it meant for the parent if its inputs are scaled, encoded and
tokenized the same way, so the child's columns must be the parent's (by name
and kind), and its classes the parent's when the output layer is kept (head:
keep); with head: reset the child brings its own classes. Every mismatch is
reported at once, each naming the column.

The leak check compares the child's test rows with the rows the parent
trained on, by the stable row hash clean computes for every row
(tasks/data/hashing.py: a row's hash depends only on its values). Rows of
another source never share a hash, so only a child of the same source can
leak, e.g. when its split seed or fractions differ from the parent's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.data.tables import SPLITS
from tasks.errors import InputError

FILES = {"weights": "model.safetensors", "transform": "transform.json", "tokenizer": "tokenizer.json",
         "rows": "rows.parquet", "buffer": "buffer.parquet",
         "continual": "continual.json"}  # what the parent stage (tasks/parent.py) fetches
RECORD = "parent.json"
ROWS_SCHEMA = pa.schema([pa.field("row", pa.uint64(), nullable=False), pa.field("split", pa.int8(), nullable=False),
                         pa.field("experience", pa.int16(), nullable=False)])
LEGACY_ROWS_SCHEMA = pa.schema(list(ROWS_SCHEMA)[:2])  # a parent registered before experiences were kept
EXPERIENCES_KEY = b"experiences"  # rows.parquet's metadata: each experience's data version, in order


def _kinds(t: dict) -> dict[str, str]:
    return {c["name"]: "numeric" for c in t["numeric"]} | {c["name"]: "categorical" for c in t["categorical"]}


def adopt(parent: dict, child: dict, head: str, where: str) -> dict:
    """The transform clean applies to the child: the parent's fits and scales, with the child's label column,
    data version and (head: reset) classes. Refuses, naming each column, data that does not fit it."""
    problems = []
    if parent.get("task", "classification") != child["task"]:
        problems.append(f"the parent is a {parent.get('task', 'classification')}, the child a {child['task']} "
                        f"(ingest.task)")
    mine, theirs = _kinds(child), _kinds(parent)
    problems += [f"column {c!r} ({k}) is missing: the parent was trained with it" for c, k in theirs.items()
                 if c not in mine]
    problems += [f"column {c!r} is {mine[c]} here, {k} for the parent" for c, k in theirs.items()
                 if c in mine and mine[c] != k]
    problems += [f"column {c!r} is not in the parent's preprocessing (its model has no input for it); leave it "
                 f"out of the source" for c in mine if c not in theirs]
    if (parent.get("text_column") or None) != (child.get("text_column") or None):
        problems.append(f"text column {child.get('text_column')!r}, the parent's {parent.get('text_column')!r} "
                        f"(ingest.text_column)")
    if (parent.get("image_shape") or None) != (child.get("image_shape") or None):
        problems.append(f"image shape {child.get('image_shape')}, the parent's {parent.get('image_shape')} "
                        f"(ingest.image_shape)")
    classes = child["classes"]
    if head == "keep" and child["task"] == "classification":
        new = [c for c in child["classes"] if str(c) not in {str(p) for p in parent["classes"]}]
        if new:
            problems.append(f"label(s) {new[:10]} of column {child['label_column']!r} are not among the parent's "
                            f"classes {parent['classes'][:20]}; set train.init.head: reset for a new output layer")
        classes = parent["classes"]  # the kept output layer's order
    if problems:
        raise InputError(f"{where}: the data does not fit the parent's preprocessing ({len(problems)} "
                         f"problem(s)): " + "; ".join(problems))
    t = dict(parent, label_column=child["label_column"], classes=classes, data_version=child["data_version"],
             inherited=True)
    if child["task"] == "regression" and head == "reset":
        t["target"] = child["target"]
    return t


def write_rows(path: Path, hashes: np.ndarray, split: np.ndarray, experience: np.ndarray | None = None,
               experiences: list[dict] | None = None) -> None:
    """Each kept row's hash, split index (0 train, 1 val, 2 test) and experience (the data version, counted
    along the parent lineage, it first appeared in); the experiences' data versions in the metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    experience = np.zeros(len(hashes), np.int16) if experience is None else experience
    meta = {EXPERIENCES_KEY: json.dumps(experiences or [{"experience": 0, "data_version": None}]).encode()}
    table = pa.table([pa.array(hashes.astype(np.uint64)), pa.array(split.astype(np.int8)),
                      pa.array(experience.astype(np.int16))], schema=ROWS_SCHEMA.with_metadata(meta))
    pq.write_table(table, path)


def read_rows(path: Path) -> pa.Table:
    """rows.parquet; one from before experiences were kept reads as experience 0 throughout."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"{path}: the parent's row hashes cannot be read ({e})") from None
    if table.schema.equals(LEGACY_ROWS_SCHEMA):
        meta = {EXPERIENCES_KEY: json.dumps([{"experience": 0, "data_version": None}]).encode()}
        return table.append_column(ROWS_SCHEMA.field("experience"),
                                   pa.array(np.zeros(table.num_rows, np.int16))).replace_schema_metadata(meta)
    if not table.schema.equals(ROWS_SCHEMA):
        raise InputError(f"{path}: expected columns row (uint64), split (int8) and experience (int16), got "
                         f"{table.schema}")
    return table


def experiences_of(rows: pa.Table, path: Path) -> list[dict]:
    """The experiences rows.parquet records, checked: numbered 0, 1, ... and covering its rows."""
    try:
        listed = json.loads((rows.schema.metadata or {})[EXPERIENCES_KEY])
        numbers = [e["experience"] for e in listed]
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"{path}: no readable list of experiences in its metadata ({e})") from None
    seen = set(np.unique(rows["experience"].to_numpy()).tolist())
    if numbers != list(range(len(numbers))) or not seen <= set(numbers):
        raise InputError(f"{path}: experiences {numbers} do not number 0, 1, ... or miss the rows' {sorted(seen)}")
    return listed


def assign_experiences(parent_rows: pa.Table | None, parent_experiences: list[dict], hashes: np.ndarray,
                       data_version: str | None) -> tuple[np.ndarray, list[dict]]:
    """Each row's experience: the parent's for a row it had, the next one for the rows it had not (none
    when every row is the parent's); from scratch, every row is experience 0."""
    if parent_rows is None:
        return np.zeros(len(hashes), np.int16), [{"experience": 0, "data_version": data_version}]
    known = parent_rows["row"].to_numpy()
    order = np.argsort(known)
    at = np.clip(np.searchsorted(known, hashes, sorter=order), 0, max(len(known) - 1, 0))
    found = (known[order[at]] == hashes) if len(known) else np.zeros(len(hashes), bool)
    experience = np.where(found, parent_rows["experience"].to_numpy()[order[at]] if len(known) else 0, -1)
    listed = list(parent_experiences)
    if (~found).any():
        listed.append({"experience": len(listed), "data_version": data_version})
        experience[~found] = len(listed) - 1
    return experience.astype(np.int16), listed


def added_experience(listed: list[dict], parent: Path | None) -> bool:
    """Whether this data's newest experience is its own: False when the parent's rows.parquet (in the folder
    the parent stage fills) lists as many experiences, i.e. every row here is one the parent had, and the
    newest experience is the parent's (assign_experiences adds none)."""
    path = Path(parent) / FILES["rows"] if parent is not None else None
    if path is None or not path.exists():
        return True  # from scratch, or a parent that records no rows: every row is new to the model
    return len(listed) > len(experiences_of(read_rows(path), path))


def leaks(parent_rows: pa.Table, hashes: np.ndarray, split: np.ndarray) -> int:
    """How many of the child's test rows (split 2) the parent trained on (its split 0)."""
    trained = parent_rows.filter(pc.equal(parent_rows["split"], SPLITS.index("train")))["row"]
    test = hashes[split == SPLITS.index("test")]
    return int(np.isin(test, trained.to_numpy()).sum())


def read_record(folder: Path) -> dict:
    """parent.json as the parent stage wrote it, checked: {"from": null}, or a parent with its weights'
    sha256 (and its commit, for a registered one); no parent.json (a project from before the parent stage)
    means from scratch."""
    path = Path(folder) / RECORD
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return {"from": None}
    except ValueError as e:
        raise InputError(f"{path}: not JSON ({e}); run `dvc repro parent`") from None
    if not isinstance(record, dict) or "from" not in record:
        raise InputError(f"{path}: expected a record with `from`; run `dvc repro parent`")
    if record["from"] is None or record.get("unassigned") is True:
        return record
    weights = record.get("weights")
    lacks = [what for what, missing in (("weights sha256", not isinstance(weights, dict) or not weights.get("sha256")),
                                        ("commit", record.get("artifact") and not record.get("commit"))) if missing]
    if lacks:
        raise InputError(f"{path}: the parent {record['from']!r} has no {' and no '.join(lacks)}; "
                         f"run `dvc repro parent`")
    return record


def fetched(folder: Path, spec: str | None) -> dict:
    """parent.json, checked to be the parent train.init.from names now (a stage run by hand after a
    params change would otherwise train from the old one)."""
    record = read_record(folder)
    if record.get("from") != spec:
        raise InputError(f"{Path(folder) / RECORD} holds the parent {record.get('from')!r}, but train.init.from "
                         f"is {spec!r}; run `dvc repro` (or `dvc repro parent`) to fetch it")
    return record
