"""Lineage both ways: what made a version, which versions a piece of data made, and parent to child.

    from tasks.registry.lineage import lineage, trained_on, chain, children
    lineage("digits@prod", repo)            # data hashes from its commit's dvc.lock, params, code, metrics...
                                            #   and `chain`: its parent, the parent's parent... to scratch
    trained_on("1f2e3d4c", repo=repo)       # versions whose data has that md5 (prefix) or data version
    children("digits@v0.0.3", repo)         # versions fine-tuned from that version (by commit and weights)
    derived_from(Path("parent_model"))            # what register records of the parent stage's parent.json

The data queries read the dvc.lock committed with each version (tasks.registry.dvc_files), so they answer
for the data as it was when the version was registered, not as it is in the checkout now. Parent and child
are linked by the lineage's `derived_from` (the parent's spec, artifact, version, commit and weights
sha256, from the parent stage's parent.json): a child of `digits@prod` names the version prod was then,
and a link holds only while that version still resolves to the recorded commit and weights.
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
                "registered_at", "input", "signature", "test_split", "identity", "search", "derived_from")
DERIVED_KEYS = ("spec", "artifact", "version", "commit", "sha256")


def lineage(spec: str, repo: str | Path = ".") -> dict:
    """What made a version: data hashes from the dvc.lock of its commit, its lineage record, and the chain of
    its parents back to the first model trained from scratch."""
    v = resolve(spec, repo)
    rec = read_lineage(v, repo)
    return {"artifact": v.name, "version": v.version, "commit": v.commit,
            "data": data_hashes(read_lock(repo, commit=v.commit)),
            **{k: rec.get(k) for k in LINEAGE_KEYS}, "decisions": decisions(v.commit, repo),
            "chain": chain(v, repo, rec)}


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


def derived_from(folder: Path) -> dict | None:
    """The lineage's `derived_from` from the parent stage's `folder`/parent.json (tasks/data/inherit.py reads
    and checks it): None from scratch, else the parent's spec, artifact, version and commit (None for a
    plain safetensors file) and its weights' sha256."""
    from tasks.data.inherit import read_record

    try:
        parent = read_record(folder)
    except InputError as e:
        raise InputError(f"register: {e}") from None
    if parent["from"] is None or parent.get("unassigned"):  # from scratch (a stage that held no version yet)
        return None
    return {"spec": parent["from"], "artifact": parent.get("artifact"), "version": parent.get("version"),
            "commit": parent.get("commit"), "sha256": parent["weights"]["sha256"]}


def declared_parent(rec: dict) -> str | None:
    """train.init.from in a lineage's params: what a lineage from before `derived_from` says of its parent."""
    return (((rec.get("params") or {}).get("train") or {}).get("init") or {}).get("from")


def _entry(v: Version, rec: dict) -> dict:
    derived = rec.get("derived_from")
    return {"artifact": v.name, "version": v.version, "commit": v.commit,
            "sha256": (rec.get("model") or {}).get("sha256"),
            "spec": derived.get("spec") if derived else declared_parent(rec)}


def _parent(derived: dict, seen: set[str], repo: str | Path) -> tuple[Version, dict] | dict:
    """The parent's version and lineage, or the entry that ends the chain (a file, a cycle, a version that
    no longer resolves to the recorded commit and weights)."""
    if not derived.get("artifact"):
        return {"file": derived.get("spec"), "sha256": derived.get("sha256"),
                "end": "a plain weights file: what made it is not in the registry"}
    named = {k: derived.get(k) for k in DERIVED_KEYS if k != "spec"}
    spec = f"{derived['artifact']}@{derived['version']}"
    if derived.get("commit") in seen:
        return named | {"end": f"cycle: {spec} at {str(derived['commit'])[:8]} is already in the chain"}
    try:
        v = resolve(spec, repo)
        if v.commit != derived.get("commit"):
            raise InputError(f"{spec} is now commit {v.commit[:8]}, not the recorded {str(derived['commit'])[:8]}")
        rec = read_lineage(v, repo)
    except InputError as e:
        return named | {"end": f"does not resolve: {e}"}
    if (rec.get("model") or {}).get("sha256") != derived.get("sha256"):
        return named | {"end": f"does not resolve: {spec}'s weights sha256 "
                               f"{str((rec.get('model') or {}).get('sha256'))[:12]} is not the recorded "
                               f"{str(derived.get('sha256'))[:12]}"}
    return v, rec


def chain(v: Version, repo: str | Path = ".", rec: dict | None = None) -> list[dict]:
    """`v`, its parent, the parent's parent... each {artifact, version, commit, sha256 (weights), spec (what it
    was derived with; None from scratch)}; the last entry says in `end` why the chain stops there."""
    rec = read_lineage(v, repo) if rec is None else rec
    out: list[dict] = []
    while True:
        out.append(_entry(v, rec))
        derived = rec.get("derived_from")
        if not derived:
            spec = declared_parent(rec)
            out[-1]["end"] = (f"derived from {spec}, registered before lineage recorded which version"
                              if spec else "trained from scratch")
            return out
        found = _parent(derived, {e["commit"] for e in out}, repo)
        if isinstance(found, dict):
            return out + [found]
        v, rec = found


def children(spec: str, repo: str | Path = ".") -> list[dict]:
    """The versions (of any artifact in the registry) whose `derived_from` is version `spec`: its commit and
    its weights' sha256, whatever spec the child was trained with (digits@prod names the version it was)."""
    v = resolve(spec, repo)
    sha256 = (read_lineage(v, repo).get("model") or {}).get("sha256")
    found = []
    for n in artifact_names(repo):
        for c in versions(n, repo, missing_ok=True):
            derived = read_lineage(Version(n, c["version"], c["commit"]), repo).get("derived_from") or {}
            if sha256 and derived.get("commit") == v.commit and derived.get("sha256") == sha256:
                found.append({"artifact": n, **c, "spec": derived.get("spec")})
    return found
