"""Lineage both ways: what made a version, and which versions a piece of data made.

    from tasks.registry.lineage import lineage, trained_on
    lineage("digits@prod", repo)            # data hashes from its commit's dvc.lock, params, code, metrics...
    trained_on("1f2e3d4c", repo=repo)       # versions whose data has that md5 (prefix) or data version

Both read the dvc.lock committed with each version (tasks.registry.dvc_files), so they answer for the
data as it was when the version was registered, not as it is in the checkout now.
"""

from __future__ import annotations

import re
from pathlib import Path

from tasks.errors import InputError
from tasks.registry.dvc_files import data_hashes, read_lock
from tasks.registry.policy import decisions
from tasks.registry.versions import Version, artifact_names, read_lineage, resolve, versions

HASH = re.compile(r"^[0-9a-f]{6,64}(\.dir)?$")
LINEAGE_KEYS = ("data_version", "params", "code_commit", "code_dirty", "deepspeed", "world_size",
                "prefect_flow_run_id", "metrics", "model", "preprocessing", "contract", "reproducible", "promotion",
                "registered_at", "input", "signature", "test_split", "identity", "search")


def lineage(spec: str, repo: str | Path = ".") -> dict:
    """What made a version: data hashes from the dvc.lock of its commit, and its lineage record."""
    v = resolve(spec, repo)
    rec = read_lineage(v, repo)
    return {"artifact": v.name, "version": v.version, "commit": v.commit,
            "data": data_hashes(read_lock(repo, commit=v.commit)),
            **{k: rec.get(k) for k in LINEAGE_KEYS}, "decisions": decisions(v.commit, repo)}


def _matches(v: Version, h: str, repo: str | Path) -> list[str]:
    """Where version `v`'s data hashes (or its data version) start with `h`."""
    hits = [f"{stage}: {path}" for stage, outs in data_hashes(read_lock(repo, commit=v.commit)).items()
            for path, md5 in outs.items() if md5 and md5.removesuffix(".dir").startswith(h)]
    rec = read_lineage(v, repo)
    if (rec.get("data_version") or "").startswith(h):
        hits.append(f"data version {rec['data_version']}")
    return hits


def trained_on(data_hash: str, name: str | None = None, repo: str | Path = ".") -> list[dict]:
    """The versions whose data (any output hash of a data stage in their dvc.lock, or the ingest data
    version) is `data_hash`, a whole hash or a prefix of at least 6 hex digits."""
    h = (data_hash or "").lower()
    if not HASH.match(h):
        raise InputError(f"data hash {data_hash!r}: expected at least 6 hex digits: an md5 from dvc.lock "
                         f"(e.g. of data/raw/table.parquet) or the data version in the ingest manifest")
    h = h.removesuffix(".dir")
    found = []
    for n in [name] if name else artifact_names(repo):
        for v in versions(n, repo, missing_ok=name is None):  # a declared model with no version yet: none
            hits = _matches(Version(n, v["version"], v["commit"]), h, repo)
            if hits:
                found.append({"artifact": n, **v, "matches": hits})
    return found
