"""The model registry: versions and stages as GTO git tags on DVC artifacts, policy, lineage both ways.

    python -m tasks.registry list [NAME]                  # versions, stages, metric, commit
    python -m tasks.registry show digits@prod             # metrics, lineage, decisions, model card
    python -m tasks.registry promote digits@v0.0.3        # checked against register's policy in params.yaml
    python -m tasks.registry rollback digits              # the previous production version back
    python -m tasks.registry lineage digits@prod          # what made it: data hashes from its dvc.lock, ...
    python -m tasks.registry trained-on 1f2e3d4c          # versions trained on that data hash / data version

A model spec is NAME@VERSION (digits@v0.0.3), NAME@STAGE (digits@prod) or NAME@latest. Loading and
prediction are in tasks/loading.py and tasks/predict.py.

A version is a GTO tag on the commit that register made: that commit's dvc.lock holds the weights'
hash and every data hash, and its lineage file the rest. A stage is held by one version at a time:
moving it unassigns the holder and assigns the new one (GTO tags, each in a later second than the
last, since DVC's `artifacts get --stage` takes the newest stage tag by its one-second time).
Every promotion decision, refusals included, is appended as a JSON line to the version commit's
git note (`git notes --ref=registry show <commit>`). Everything that writes tags or commits takes
one lock in .git/, so concurrent registrations get distinct versions and lose no tag.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from tasks.errors import InputError, run_main
from tasks.params import Register, load_params

FALLBACK_AUTHOR = ("dagtrain", "dagtrain@localhost")  # for machines with no git identity
DATA_STAGES = ("ingest", "clean", "augment", "train")
NOTES_REF = "registry"  # refs/notes/registry: the decisions about each version
LOCK_FILE = "dagtrain-registry.lock"  # in the git common dir, shared by worktrees
LOCK_TIMEOUT_S = 600
ROLLBACK = "rollback"  # how a rollback's stage tags' messages start
_NAME = r"[a-z0-9][a-z0-9-]*"
SPEC = re.compile(rf"^(?P<name>{_NAME})@(?P<ref>.+)$")
VERSION = re.compile(r"^v\d+\.\d+\.\d+$")
STAGE = re.compile(rf"^{_NAME}$")
HASH = re.compile(r"^[0-9a-f]{6,64}(\.dir)?$")


def git(*args: str, cwd: str | Path = ".", check: bool = True) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise InputError(f"git {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


def author(repo: str | Path = ".") -> tuple[str, str]:
    """git's own identity if configured, else a fallback so unattended runs can commit and tag."""
    email = os.environ.get("GIT_AUTHOR_EMAIL") or git("config", "user.email", cwd=repo, check=False)
    name = os.environ.get("GIT_AUTHOR_NAME") or git("config", "user.name", cwd=repo, check=False)
    return (name, email) if name and email else FALLBACK_AUTHOR


def data_hashes(lock: dict | None) -> dict:
    """{stage: {out path: md5}} for the data stages, as DVC recorded them in a dvc.lock."""
    stages = (lock or {}).get("stages", {})
    return {s: {o["path"]: o.get("md5") for o in stages[s].get("outs", [])} for s in DATA_STAGES if s in stages}


@contextmanager
def registry_lock(repo: str | Path = ".", timeout_s: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """One writer of versions, stages, commits and notes at a time (filelock in .git/)."""
    from filelock import FileLock, Timeout

    common = Path(repo, git("rev-parse", "--git-common-dir", cwd=repo))
    try:
        with FileLock(str(common / LOCK_FILE), timeout=timeout_s):
            yield
    except Timeout:
        raise InputError(f"{common / LOCK_FILE}: another registry operation held the lock for over "
                         f"{timeout_s:.0f} s; is one stuck?") from None


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
    return list((yaml.safe_load(Path(repo, "dvc.yaml").read_text()) or {}).get("artifacts", {}))


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


def read_at(commit: str, path: str | Path, repo: str | Path = ".") -> str | None:
    """A file as committed at `commit`; None where it is not."""
    return git("show", f"{commit}:{Path(path).as_posix()}", cwd=repo, check=False) or None


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


def decisions(commit: str, repo: str | Path = ".") -> list[dict]:
    text = git("notes", f"--ref={NOTES_REF}", "show", commit, cwd=repo, check=False)
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    except json.JSONDecodeError as e:
        raise InputError(f"the registry note of {commit[:8]} (git notes --ref={NOTES_REF}) has a line that is "
                         f"not JSON ({e}); fix it with `git notes --ref={NOTES_REF} edit {commit[:8]}`") from None


def record_decision(commit: str, decision: dict, repo: str | Path = ".") -> None:
    """Append a decision to the version commit's note (under the registry lock)."""
    name, email = author(repo)
    entry = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "by": name, **decision}
    git("-c", f"user.name={name}", "-c", f"user.email={email}", "notes", f"--ref={NOTES_REF}", "append",
        "-m", json.dumps(entry, sort_keys=True), commit, cwd=repo)


def decide(policy: Register, stage: str, candidate: dict, current: tuple[str, dict] | None) -> dict:
    """The promotion policy: may `candidate` (a lineage record) take `stage` from `current`?"""
    metric, refusals = policy.metric, []
    contract = candidate.get("contract") or {}
    if policy.require_contract and not contract.get("ok"):
        refusals.append(f"data version {contract.get('data_version')} has not passed the data contract "
                        f"({contract.get('reason', 'no contract record')})")
    repro = candidate.get("reproducible") or {}
    if policy.require_reproducible and not repro.get("ok"):
        refusals.append(f"not shown reproducible ({repro.get('reason', 'not checked at registration')})")
    value = (candidate.get("metrics") or {}).get(metric)
    if not isinstance(value, (int, float)):
        refusals.append(f"register.metric {metric!r} is not among its metrics")
    if refusals:
        return {"promote": False, "stage": stage, "reason": "; ".join(refusals)}
    if current is None:
        return {"promote": True, "stage": stage, "reason": f"no version is in stage {stage!r} yet"}
    version, record = current
    old = (record.get("metrics") or {}).get(metric)
    if not isinstance(old, (int, float)):
        return {"promote": False, "stage": stage, "current": version,
                "reason": f"{metric} of {version} in {stage} cannot be read from its lineage"}
    gain = (value - old) if policy.higher_is_better else (old - value)
    verdict = gain > 0 and gain >= policy.min_improvement
    word = "beats" if verdict else "does not beat"
    return {"promote": bool(verdict), "stage": stage, "current": version, "current_value": old,
            "reason": f"{metric} {value:.4f} {word} {version}'s {old:.4f} by the required {policy.min_improvement}"}


def _after_last_tag(name: str, repo: str | Path) -> None:
    """Wait until the clock is past the second of `name`'s newest tag: tags are ordered by that time."""
    times = git("for-each-ref", "--format=%(taggerdate:unix)", f"refs/tags/{name}@*", f"refs/tags/{name}#*",
                cwd=repo).split()
    newest = max((int(t) for t in times if t.isdigit()), default=0)
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


def promote(spec: str, stage: str | None = None, repo: str | Path = ".") -> dict:
    """Move a stage to a registered version if register's policy (params.yaml) allows; record either way."""
    policy = load_params(Path(repo) / "params.yaml").register
    stage = stage or policy.stage
    if not STAGE.match(stage):
        raise InputError(f"stage {stage!r}: expected lower case letters, digits and dashes")
    with registry_lock(repo):
        v = resolve(spec, repo)
        held = stage_holder(v.name, stage, repo)
        if held and held.version == v.version:
            raise InputError(f"{v} is already in stage {stage!r}")
        current = (held.version, read_lineage(held, repo)) if held else None
        decision = decide(policy, stage, read_lineage(v, repo), current)
        record_decision(v.commit, {"action": "promote", "version": v.version, **decision}, repo)
        if decision["promote"]:
            move_stage(v.name, stage, v.version, f"{stage}: {decision['reason']}", repo)
    return {"artifact": v.name, "version": v.version, **decision}


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


def rollback(name: str, stage: str = "prod", repo: str | Path = ".") -> dict:
    """Put back the version that held `stage` before the current one."""
    if not re.fullmatch(_NAME, name or "") or not STAGE.match(stage):
        raise InputError(f"rollback {name!r} {stage!r}: expected an artifact name and a stage (e.g. digits prod)")
    with registry_lock(repo):
        current = stage_holder(name, stage, repo)
        if current is None:
            raise InputError(f"{name}: no version is in stage {stage!r}, so there is nothing to roll back")
        earlier = [v for v in stage_stack(name, stage, repo) if v != current.version]
        if not earlier:
            raise InputError(f"{name}: {current.version} is the first version to hold stage {stage!r}; "
                             f"there is no earlier one to roll back to")
        back = resolve(f"{name}@{earlier[-1]}", repo)
        reason = f"{ROLLBACK}: {stage} back to {back.version} from {current.version}"
        move_stage(name, stage, back.version, reason, repo)
        for v, action in ((back, "rollback-to"), (current, "rolled-back")):
            record_decision(v.commit, {"action": action, "version": v.version, "stage": stage, "promote": v is back,
                                       "reason": reason}, repo)
    return {"artifact": name, "stage": stage, "version": back.version, "previous": current.version,
            "reason": reason}


def lineage(spec: str, repo: str | Path = ".") -> dict:
    """What made a version: data hashes from the dvc.lock of its commit, and its lineage record."""
    v = resolve(spec, repo)
    rec = read_lineage(v, repo)
    lock = yaml.safe_load(read_at(v.commit, "dvc.lock", repo) or "{}")
    keys = ("data_version", "params", "code_commit", "code_dirty", "deepspeed", "world_size",
            "prefect_flow_run_id", "metrics", "model", "preprocessing", "contract", "reproducible", "promotion",
            "registered_at")
    return {"artifact": v.name, "version": v.version, "commit": v.commit, "data": data_hashes(lock),
            **{k: rec.get(k) for k in keys}, "decisions": decisions(v.commit, repo)}


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
            lock = yaml.safe_load(read_at(v["commit"], "dvc.lock", repo) or "{}")
            hits = [f"{stage}: {path}" for stage, outs in data_hashes(lock).items() for path, md5 in outs.items()
                    if md5 and md5.removesuffix(".dir").startswith(h)]
            rec = read_lineage(Version(n, v["version"], v["commit"]), repo)
            if (rec.get("data_version") or "").startswith(h):
                hits.append(f"data version {rec['data_version']}")
            if hits:
                found.append({"artifact": n, **v, "matches": hits})
    return found


def _print_show(spec: str, repo: str | Path) -> None:
    info = lineage(spec, repo)
    card_path = version_paths(info["commit"], repo).get("model_card", "registry/model_card.md")
    print(f"{info['artifact']} {info['version']} at {info['commit'][:8]} (registered {info['registered_at']})")
    print(f"  metrics: {json.dumps({k: round(v, 4) for k, v in (info['metrics'] or {}).items()})}")
    print(f"  data version {info['data_version']}; code {info['code_commit']}; flow run {info['prefect_flow_run_id']}")
    for d in info["decisions"]:
        print(f"  {d['at']} {d['action']} {d.get('stage', '')}: {'yes' if d.get('promote') else 'no'} - {d['reason']}")
    card = read_at(info["commit"], card_path, repo)
    print("\n" + (card or f"(no model card at {card_path})"))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m tasks.registry", description=__doc__.split("\n\n")[0])
    ap.add_argument("--repo", default=".", help="the git/DVC repository (default: here)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="versions and stages").add_argument("name", nargs="?")
    sub.add_parser("show", help="one version").add_argument("spec")
    p = sub.add_parser("promote", help="move a stage to a version, if the policy allows")
    p.add_argument("spec")
    p.add_argument("--stage", help="default: register.stage")
    p = sub.add_parser("rollback", help="the stage's previous version back")
    p.add_argument("name")
    p.add_argument("--stage", help="default: register.stage")
    sub.add_parser("lineage", help="what made a version").add_argument("spec")
    p = sub.add_parser("trained-on", help="versions trained on a data hash")
    p.add_argument("hash")
    p.add_argument("--name")
    args = ap.parse_args(argv)

    def body():
        repo = args.repo
        if args.cmd == "list":
            out = {n: versions(n, repo, missing_ok=args.name is None)
                   for n in ([args.name] if args.name else artifact_names(repo))}
        elif args.cmd == "show":
            return print(json.dumps(lineage(args.spec, repo), indent=2)) if args.json else _print_show(args.spec, repo)
        elif args.cmd == "promote":
            out = promote(args.spec, args.stage, repo)
        elif args.cmd == "rollback":
            out = rollback(args.name, args.stage or load_params(Path(repo) / "params.yaml").register.stage, repo)
        elif args.cmd == "lineage":
            out = lineage(args.spec, repo)
        else:
            out = trained_on(args.hash, args.name, repo)
        if args.json or args.cmd == "lineage":
            print(json.dumps(out, indent=2))
        elif args.cmd == "list":
            for n, vs in out.items():
                for v in vs:
                    print(f"{n}@{v['version']}  {v['commit'][:8]}  {v['created_at']}  {','.join(v['stages'])}")
        elif args.cmd in ("promote", "rollback"):
            moved = args.cmd == "rollback" or out["promote"]
            print(f"{out['artifact']} {out['version']}: {'now in' if moved else 'not promoted to'} "
                  f"{out['stage']}: {out['reason']}")
        else:
            for v in out:
                print(f"{v['artifact']}@{v['version']}  {v['commit'][:8]}  {'; '.join(v['matches'])}")
            if not out:
                print(f"no registered version was trained on {args.hash}")
        if args.cmd == "promote" and not out["promote"]:
            sys.exit(1)

    run_main(body)


if __name__ == "__main__":
    main()
