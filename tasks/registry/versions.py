"""Versions and stages of a DVC artifact, as GTO git tags: specs, listing, resolving, moving a stage.

    from tasks.registry.versions import resolve, versions, stage_holder, read_lineage
    v = resolve("digits@prod", repo)        # Version(name, version, commit); also digits@v0.0.3, digits@latest
    versions("digits", repo)                # newest first: version, commit, stages, created_at
    read_lineage(v, repo)                   # the lineage record committed with the version

A version is a GTO tag on the commit that register made. A stage is held by one version at a time:
moving it unassigns the holder and assigns the new one (GTO tags, each in a later second than the
last, since DVC's `artifacts get --stage` takes the newest stage tag by its one-second time).
Writers (move_stage) run under tasks.registry.git.registry_lock.

Who holds a stage is read here from the stage tags themselves (stage_events), the latest assignment
winning, not from GTO's `which` (the highest version among those assigned, whenever they were) nor
its `show` (the latest by the tag's one-second time, and in a tie the lower version): tags made in
one second (a `gto assign --force` right after a promotion, two promotions at once) are ordered by
GTO's counter in the tag's name (`digits#prod#7`: one sequence per artifact, each tag one past the
highest before it).
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
    held = {}  # version: the stages it holds, the latest assigned first
    for stage, holders in stage_holders(name, repo).items():
        held.setdefault(holders[0].version, []).append(stage)
    out = [{"version": v["version"], "commit": v["commit_hexsha"], "stages": held.get(v["version"], []),
            "created_at": v["created_at"].isoformat()} for v in shown if VERSION.match(v["version"])]
    if not out and not missing_ok:
        raise InputError(f"no version of {name!r} is registered in {Path(repo).resolve()}")
    return sorted(out, key=lambda v: tuple(int(x) for x in v["version"][1:].split(".")), reverse=True)


def _order(event: dict) -> tuple:
    """Oldest first: the tag's time (one-second), then GTO's counter in its name (`digits#prod#7`; 0 for
    the simple `digits#prod` and for versions' tags), then GTO's own order of events in one second."""
    from gto.tag import parse_name

    counter = (parse_name(event["ref"] or "", raise_on_fail=False) or {}).get("counter", 0)
    return event["timestamp"], counter, event["priority"]


def stage_events(name: str, repo: str | Path = ".") -> list[dict]:
    """`name`'s events as GTO reads them from its tags (gto.api.history: event, version, stage, commit,
    message, ref = the tag, ...), oldest first by `_order`: within a second, in the order they were made."""
    import gto.api

    events = [e for e in gto.api.history(str(repo), name, ascending=True) if e["artifact"] == name]
    return sorted(events, key=_order)  # stable: GTO's order where ours ties


def stage_holders(name: str, repo: str | Path = ".") -> dict[str, list[Version]]:
    """{stage: the versions in it, the latest assigned first}: a version is in a stage when its last
    event there is an assignment and it is not deregistered (the registry keeps one version per stage;
    a `gto assign` by hand can add another, which then holds it, as being the latest)."""
    last: dict[tuple[str, str], tuple[int, dict]] = {}  # (stage, version): its last event there
    registered: dict[str, bool] = {}
    for i, e in enumerate(stage_events(name, repo)):
        if e["event"] in ("registration", "deregistration"):
            registered[e["version"]] = e["event"] == "registration"
        elif e["event"] in ("assignment", "unassignment"):
            last[(e["stage"], e["version"])] = (i, e)
    holders: dict[str, list[Version]] = {}
    for (stage, version), (_, e) in sorted(last.items(), key=lambda kv: kv[1][0], reverse=True):
        if e["event"] == "assignment" and registered.get(version, True):
            holders.setdefault(stage, []).append(Version(name, version, e["commit"]))
    return holders


def stage_holder(name: str, stage: str, repo: str | Path = ".") -> Version | None:
    """The version in `stage`: the one assigned it last (of those still in it)."""
    return (stage_holders(name, repo).get(stage) or [None])[0]


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
    for vs in stage_holders(name, repo).get(stage, []):
        if vs.version != version:
            _after_last_tag(name, repo)
            gto.api.unassign(str(repo), name, version=vs.version, stage=stage, message=f"{message} ({vs.version} "
                             f"leaves {stage})", author=who, author_email=email)
    _after_last_tag(name, repo)
    gto.api.assign(str(repo), name, stage, version=version, message=message, force=True, author=who,
                   author_email=email)


def stage_stack(name: str, stage: str, repo: str | Path = ".") -> list[str]:
    """The versions that held `stage`, oldest first, with those rolled back taken off."""
    stack: list[str] = []
    for e in stage_events(name, repo):
        if e["event"] != "assignment" or e["stage"] != stage:
            continue
        if (e["message"] or "").startswith(ROLLBACK):
            while stack and stack[-1] != e["version"]:
                stack.pop()
        if not stack or stack[-1] != e["version"]:
            stack.append(e["version"])
    return stack
