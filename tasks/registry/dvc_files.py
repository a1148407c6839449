"""What DVC wrote and reads: dvc.lock (each stage's outputs and their md5) and dvc.yaml's `artifacts:`.

    from tasks.registry.dvc_files import read_lock, stage_outs, data_hashes, artifacts
    lock = read_lock(repo)                       # the checkout's dvc.lock ({} before any run)
    lock = read_lock(repo, commit=v.commit)      # as committed with a version
    stage_outs(lock, "ingest")                   # {"data/raw/table.parquet": md5, ...}
    data_hashes(lock)                            # {stage: {out path: md5}} of the data stages
    artifacts(repo)                              # {"digits": {"path": "model/model.safetensors", ...}}

The one reader of these files for the register stage, the registry's lineage queries and the flow
(its stage summaries and its plan).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tasks.errors import InputError
from tasks.registry.git import read_at

LOCK, DVC_YAML = "dvc.lock", "dvc.yaml"
DATA_STAGES = ("ingest", "clean", "buffer", "augment", "train")  # the stages whose outputs a model was made from


def _yaml(text: str | None, where: str) -> dict:
    try:
        doc = yaml.safe_load(text or "") or {}
    except yaml.YAMLError as e:
        raise InputError(f"{where}: not valid YAML ({e})") from None
    if not isinstance(doc, dict):
        raise InputError(f"{where}: holds a {type(doc).__name__}, not a mapping")
    return doc


def _read(name: str, repo: str | Path, commit: str | None) -> dict:
    if commit is not None:
        return _yaml(read_at(commit, name, repo), f"{commit[:8]}:{name}")
    path = Path(repo, name)
    return _yaml(path.read_text() if path.exists() else None, str(path))


def read_lock(repo: str | Path = ".", commit: str | None = None) -> dict:
    """dvc.lock of the checkout, or as committed at `commit`; {} where there is none."""
    return _read(LOCK, repo, commit)


def stage_outs(lock: dict, stage: str) -> dict[str, str | None]:
    """{out path: md5} of `stage` as the lock records it ({} for a stage it does not hold)."""
    entry = (lock.get("stages") or {}).get(stage) or {}
    return {o["path"]: o.get("md5") for o in entry.get("outs", [])}


def locked_stages(lock: dict) -> set[str]:
    """The stages the lock holds a run of."""
    return set(lock.get("stages") or {})


def data_hashes(lock: dict) -> dict[str, dict]:
    """{stage: {out path: md5}} for the data stages the lock holds."""
    return {s: stage_outs(lock, s) for s in DATA_STAGES if s in locked_stages(lock)}


def artifacts(repo: str | Path = ".", commit: str | None = None) -> dict[str, dict]:
    """dvc.yaml's `artifacts:` ({name: {path, type, ...}}), of the checkout or at `commit`."""
    return _read(DVC_YAML, repo, commit).get("artifacts") or {}
