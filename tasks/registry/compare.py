"""Like with like, and the same model once: what the promotion policy compares, and a version's identity.

    from tasks.registry.compare import signature, unlike, meaningless, identity, same_version
    signature(transform)                          # {"task", "labels", "features", "image_shape"}
    unlike(holder_lineage, candidate_lineage)      # ["label set differs: holder digits@v0.0.1 has [0..9], ..."]
    meaningless(candidate_lineage)                 # ["its test split holds 1 class ..."]
    identity(model, transform, tokenizer, splits)  # {"weights", "preprocessing", "data"}: sha256 each
    same_version("digits", key, repo)              # the version registered with that identity, or None

A model's **signature** is what it is a model of: the task (classification or regression), the label
set (the classes clean saw, in order: the model's outputs) and the input schema (the columns the fitted
transform reads, each with the kind it reads it as: number, category, text; and the image shape). It
comes from the fitted transform (data/clean/transform.json), which is what turns raw rows into the
model's inputs; a version registered before signatures were recorded is read from its lineage's task
and raw columns (its labels unknown, so not compared). Two models are comparable, and a metric of one
can beat the other's, only when their signatures are equal.

A version's **identity** is the SHA-256 of three things, and nothing else:
    weights        the model file (its bytes: train writes them deterministically, sorted metadata)
    preprocessing  the fitted transform, and the tokenizer for text (sha256 of each, in that order)
    data           the splits the model was trained, validated and tested on: the sha256 of every file
                   under paths.splits, by relative path, in path order
The transform names the data version (the content hash of the raw snapshot), so a new data version is a
new identity even where the splits come out alike. The source file's name, the contract and drift
report, params that shape nothing (register's own, a path) and the time are not in it: renaming the
source or a changed drift report registers nothing new. Registering an identity that a version of the
same name already has adds no version (tasks/register.py says which one it is).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from tasks.data.tables import sha256_file
from tasks.registry.versions import Version, read_lineage, versions

FEW = 6  # names shown in a difference before "..."
NUMERIC_TYPE = re.compile(r"^(u?int\d*|float\d*|double|halffloat|bool|null|decimal.*)$")


def signature(transform: dict) -> dict:
    """The task, label set and input schema of the model that this fitted transform feeds."""
    regression = transform.get("task") == "regression"
    features = [[c["name"], "number"] for c in transform.get("numeric", [])]
    features += [[c["name"], "category"] for c in transform.get("categorical", [])]
    if transform.get("text_column"):
        features.append([transform["text_column"], "text"])
    shape = transform.get("image_shape")
    return {"task": "regression" if regression else "classification",
            "labels": None if regression else [str(c) for c in transform.get("classes", [])],
            "features": features, "image_shape": list(shape) if shape else None}


def signature_of(lineage: dict) -> dict:
    """A lineage's signature: as recorded, or (an older version) from its params and raw columns."""
    if lineage.get("signature"):
        return lineage["signature"]
    ingest = (lineage.get("params") or {}).get("ingest") or {}
    skip = {ingest.get("label_column"), ingest.get("text_column")}
    features = [[n, "number" if NUMERIC_TYPE.match(t) else "category"]
                for n, t in (lineage.get("input") or {}).get("columns") or [] if n not in skip]
    if ingest.get("text_column"):
        features.append([ingest["text_column"], "text"])
    return {"task": ingest.get("task", "classification"), "labels": None, "features": features,
            "image_shape": None}


def _few(names: list[str]) -> str:
    return ", ".join(names[:FEW]) + (f", ... ({len(names)} in all)" if len(names) > FEW else "")


def labels_text(labels: list[str]) -> str:
    """[0..9] for consecutive integers, else the labels themselves."""
    if len(labels) > 2 and all(re.fullmatch(r"-?\d+", x) for x in labels):
        ints = [int(x) for x in labels]
        if ints == list(range(ints[0], ints[0] + len(ints))):
            return f"[{ints[0]}..{ints[-1]}]"
    shown = ", ".join(repr(x) for x in labels[:10])
    return f"[{shown}{', ...' if len(labels) > 10 else ''}]"


def _schema_differences(held: list, cand: list) -> list[str]:
    h, c = dict(map(tuple, held)), dict(map(tuple, cand))
    parts = []
    if missing := [n for n in h if n not in c]:
        parts.append(f"lacks [{_few(missing)}]")
    if new := [n for n in c if n not in h]:
        parts.append(f"adds [{_few(new)}]")
    if kinds := [f"{n} {h[n]} -> {c[n]}" for n in h if n in c and h[n] != c[n]]:
        parts.append(f"reads [{_few(kinds)}]")
    if not parts and list(h) != list(c):
        parts.append("reads the same columns in another order")
    return parts


def unlike(holder: dict, candidate: dict, holder_name: str) -> list[str]:
    """What makes `candidate` another kind of model than `holder` (lineage records); [] when alike."""
    h, c = signature_of(holder), signature_of(candidate)
    out = []
    if h["task"] != c["task"]:
        out.append(f"task differs: holder {holder_name} is a {h['task']}, candidate a {c['task']}")
    elif h["labels"] is not None and c["labels"] is not None and h["labels"] != c["labels"]:
        out.append(f"label set differs: holder {holder_name} has {labels_text(h['labels'])}, "
                   f"candidate has {labels_text(c['labels'])}")
    parts = _schema_differences(h["features"], c["features"])
    if h["image_shape"] and c["image_shape"] and h["image_shape"] != c["image_shape"]:
        parts.append(f"has images of {c['image_shape']}, not {h['image_shape']}")
    if parts:
        out.append(f"input schema differs: holder {holder_name} reads {len(h['features'])} column(s), "
                   f"candidate {len(c['features'])}: the candidate {', '.join(parts)}")
    return out


def test_split(confusion: list[dict]) -> dict:
    """The classes in the test split and those the model predicted (evaluate's confusion pairs)."""
    return {"rows": len(confusion), "classes": sorted({str(r["actual"]) for r in confusion}),
            "predicted": sorted({str(r["predicted"]) for r in confusion})}


def meaningless(candidate: dict) -> list[str]:
    """Why a classifier's test metrics say nothing: one class in its test split, or one class predicted."""
    if signature_of(candidate)["task"] != "classification":
        return []
    split = candidate.get("test_split")
    if not split:
        return ["its lineage does not say which classes its test split held (registered before that was "
                "recorded), so its metrics cannot be shown to mean something"]
    out = []
    if len(split["classes"]) < 2:
        out.append(f"its test split holds {len(split['classes'])} class(es) {labels_text(split['classes'])}: "
                   f"a metric on one class means nothing (add rows of the other classes, or change clean.split)")
    if len(split["predicted"]) == 1 and len(split["classes"]) >= 2:
        out.append(f"it predicts {split['predicted'][0]!r} for every one of its {split['rows']} test rows")
    return out


def identity(model: Path, transform: Path, tokenizer: Path | None, splits: Path) -> dict:
    """The identity key (module docstring): sha256 of the weights, the preprocessing and the splits."""
    pre = hashlib.sha256(sha256_file(transform).encode())
    if tokenizer is not None:
        pre.update(sha256_file(tokenizer).encode())
    data = hashlib.sha256()
    for f in sorted(p for p in Path(splits).rglob("*") if p.is_file()):
        data.update(f"{f.relative_to(splits).as_posix()}:{sha256_file(f)}\n".encode())
    return {"weights": sha256_file(model), "preprocessing": pre.hexdigest(), "data": data.hexdigest()}


def same_version(name: str, key: dict, repo: str | Path = ".") -> Version | None:
    """The version of `name` registered with identity `key` (oldest first), if there is one."""
    for v in reversed(versions(name, repo, missing_ok=True)):
        found = Version(name, v["version"], v["commit"])
        if read_lineage(found, repo).get("identity") == key:
            return found
    return None
