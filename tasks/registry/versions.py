"""Versions and stages of a DVC artifact, as GTO git tags: specs, listing, resolving, moving a stage.

    from tasks.registry.versions import resolve, versions, stage_holder, read_lineage
    v = resolve("digits@prod", repo)        # Version(name, version, commit); also digits@v0.0.3, digits@latest
    versions("digits", repo)                # newest first: version, commit, stages, created_at
    read_lineage(v, repo)                   # the lineage record committed with the version

A version is a GTO tag on the commit that register made. A stage is held by one version at a time:
moving it unassigns the holder and assigns the new one (GTO tags, each in a later second than the
last, since DVC's `artifacts get --stage` takes the newest stage tag by its one-second time).
Writers (move_stage) run under tasks.registry.git.registry_lock.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tasks.errors import InputError
from tasks.registry.dvc_files import artifacts
from tasks.registry.git import author, git, newest_tag_time, read_at

ROLLBACK = "rollback"  # how a rollback's stage tags' messages start
NAME = r"[a-z0-9][a-z0-9-]*"
SPEC = re.compile(rf"^(?P<name>{NAME})@(?P<ref>.+)$")
VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
STAGE = re.compile(rf"^{NAME}$")


@dataclass(frozen=True)
class Version:
    name: str
    version: str
    commit: str

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"


def parse_spec(spec: str) -> tuple[str, str]:
    m = SPEC.match(spec or "")
    if not m or not (VERSION.match(m["ref"]) or STAGE.match(m["ref"])):
        raise InputError(f"model spec {spec!r}: expected NAME@VERSION (digits@v0.0.3), NAME@STAGE (digits@prod) "
                         f"or NAME@latest, with NAME in lower case letters, digits and dashes")
    return m["name"], m["ref"]


def check_repo(repo: str | Path) -> None:
    """The registry lives in the pipeline's git checkout: say so, rather than fail inside GTO or DVC."""
    if not Path(repo, "dvc.yaml").is_file():
        raise InputError(f"--repo {repo}: no dvc.yaml there; give the pipeline's checkout (a git clone of it)")
    if git("rev-parse", "--is-inside-work-tree", cwd=repo, check=False) != "true":
        raise InputError(f"--repo {repo}: not a git repository (versions and stages are git tags)")


def artifact_names(repo: str | Path = ".") -> list[str]:
    """The models declared in dvc.yaml's `artifacts:`."""
    check_repo(repo)
    return list(artifacts(repo))


def versions(name: str, repo: str | Path = ".", missing_ok: bool = False) -> list[dict]:
    """Every registered version of `name`, newest first: version, commit, stages, created_at."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    check_repo(repo)
    try:
        shown = gto.api.show(str(repo), name)
    except ArtifactNotFound:
        shown = []
    out = [{"version": v["version"], "commit": v["commit_hexsha"], "stages": [s["stage"] for s in v["stages"]],
            "created_at": v["created_at"].isoformat()} for v in shown if VERSION.match(v["version"])]
    if not out and not missing_ok:
        raise InputError(f"no version of {name!r} is registered in {Path(repo).resolve()}")
    return sorted(out, key=lambda v: tuple(int(x) for x in v["version"][1:].split(".")), reverse=True)


def stage_holder(name: str, stage: str, repo: str | Path = ".") -> Version | None:
    """The version in `stage` (GTO's view; the registry keeps one version per stage)."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    try:
        found = gto.api.find_versions_in_stage(str(repo), name, stage)
    except ArtifactNotFound:
        return None
    found = found[0] if isinstance(found, list) and found else found
    return Version(name, found.version, found.commit_hexsha) if found else None


def resolve(spec: str, repo: str | Path = ".") -> Version:
    name, ref = parse_spec(spec)
    known = versions(name, repo)
    if ref == "latest":
        return Version(name, known[0]["version"], known[0]["commit"])
    if VERSION.match(ref):
        for v in known:
            if v["version"] == ref:
                return Version(name, ref, v["commit"])
        raise InputError(f"model spec {spec!r}: {name} has no version {ref} (versions: "
                         f"{', '.join(v['version'] for v in known[:10])})")
    held = stage_holder(name, ref, repo)
    if held is None:
        used = sorted({s for v in known for s in v["stages"]})
        raise InputError(f"model spec {spec!r}: no version of {name} is in stage {ref!r} "
                         f"(stages in use: {', '.join(used) or 'none'})")
    return held


def version_paths(commit: str, repo: str | Path = ".") -> dict:
    """The `paths:` of params.yaml as committed with the version (paths may change later)."""
    return (yaml.safe_load(read_at(commit, "params.yaml", repo) or "{}") or {}).get("paths", {})


def read_lineage(v: Version, repo: str | Path = ".") -> dict:
    path = version_paths(v.commit, repo).get("lineage", "registry/lineage.json")
    text = read_at(v.commit, path, repo)
    try:
        rec = json.loads(text)
    except (TypeError, json.JSONDecodeError):
        raise InputError(f"{v}: no readable lineage at {v.commit[:8]}:{path}") from None
    if not isinstance(rec, dict):
        raise InputError(f"{v}: the lineage at {v.commit[:8]}:{path} holds a {type(rec).__name__}, not a record")
    return rec


def _after_last_tag(name: str, repo: str | Path) -> None:
    """Wait until the clock is past the second of `name`'s newest tag: tags are ordered by that time."""
    newest = newest_tag_time(repo, f"{name}@*", f"{name}#*")
    while time.time() < newest + 1:
        time.sleep(0.05)


def move_stage(name: str, stage: str, version: str, message: str, repo: str | Path = ".") -> None:
    """`stage` to `version` alone: every other holder is unassigned first (call under the lock)."""
    import gto.api

    who, email = author(repo)
    held = gto.api.find_versions_in_stage(str(repo), name, stage, versions_per_stage=-1) or []
    for vs in held:
        if vs.version != version:
            _after_last_tag(name, repo)
            gto.api.unassign(str(repo), name, version=vs.version, stage=stage, message=f"{message} ({vs.version} "
                             f"leaves {stage})", author=who, author_email=email)
    _after_last_tag(name, repo)
    gto.api.assign(str(repo), name, stage, version=version, message=message, force=True, author=who,
                   author_email=email)


def stage_stack(name: str, stage: str, repo: str | Path = ".") -> list[str]:
    """The versions that held `stage`, oldest first, with those rolled back taken off."""
    import gto.api

    stack: list[str] = []
    for e in gto.api.history(str(repo), name, ascending=True):
        if e["event"] != "assignment" or e["stage"] != stage:
            continue
        if (e["message"] or "").startswith(ROLLBACK):
            while stack and stack[-1] != e["version"]:
                stack.pop()
        if not stack or stack[-1] != e["version"]:
            stack.append(e["version"])
    return stack
