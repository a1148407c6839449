"""plan: which stages a run will execute, and why, before anything runs.

    python -m flows.plan                 # what `dvc repro` would do
    python -m flows.plan --driver flow   # what the Prefect flow would do (it forces ingest of a URL source)
    python -m flows.plan --json

Both drivers run the stages through DVC, so the answer is DVC's own view, read
stage by stage in the DAG's order through DVC's Python API:

- **run**: the stage changed (a dependency's file, a param, its command, a
  missing or modified output) and no earlier run with these inputs is in DVC's
  run cache; the reasons name each changed file or param;
- **restore**: the stage changed, but DVC's run cache holds a run with exactly
  these inputs: DVC puts its outputs back instead of running it;
- **if upstream changes**: nothing of the stage's own changed, but a stage it
  depends on directly runs (or may run); it runs only if that stage writes different outputs (DVC
  compares hashes, so a rerun that writes the same bytes stops there);
- **up to date**: nothing to do.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from tasks.errors import run_main

RUN, RESTORE, MAYBE, SKIP = "run", "restore", "if upstream changes", "up to date"


def _dotted(old, new, prefix: str) -> list[str]:
    """The dotted keys where two params values differ: train -> train.epochs."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted(set(old) | set(new))
        return [d for k in keys for d in _dotted(old.get(k), new.get(k), f"{prefix}.{k}")]
    return [prefix] if old != new else []


def _param_changes(stage) -> dict:
    """{section or key DVC reports: [dotted keys that changed]}, from the lock and params.yaml."""
    from dvc.dependency.param import ParamsDependency

    out = {}
    for dep in stage.deps:
        if isinstance(dep, ParamsDependency):
            locked, now = (dep.hash_info.value or {}) if dep.hash_info else {}, dep.read_params()
            for key in set(locked) | set(now):
                out[key] = _dotted(locked.get(key), now.get(key), key)
    return out


def _reasons(stage, entries: list) -> list[str]:
    """DVC's status entries for one stage, in words, params named down to the changed key."""
    out, params = [], None
    for entry in entries:
        if isinstance(entry, str):  # "changed command", "always changed"
            out.append(entry)
            continue
        for kind, changes in entry.items():
            for path, what in changes.items():
                if isinstance(what, dict):  # params: {key or section: "modified" | "new" | "deleted"}
                    params = params if params is not None else _param_changes(stage)
                    out += [f"param {d} {v}" for k, v in what.items() for d in (params.get(k) or [k])]
                else:
                    out.append(f"{kind.removeprefix('changed ').rstrip('s')} {path} {what}")
    return out


def _restorable(repo, stage) -> bool:
    """Would `dvc repro` take this changed stage's outputs from DVC's run cache instead of running it?

    The same lookup as DVC's StageCache.restore, without its side effects (it checks out outputs).
    """
    from dvc.exceptions import DvcException
    from dvc.stage.cache import _can_hash

    try:
        stage.save_deps()  # in memory: the deps' current hashes, the run cache's key
    except DvcException:  # a dependency is missing: an upstream stage makes it first
        return False
    if not _can_hash(stage):
        return False
    cache = repo.stage_cache._load(stage)
    return bool(cache) and repo.stage_cache._create_stage(cache, wdir=stage.wdir).outs_cached()


def plan(repo_path: str | Path = ".", driver: str = "dvc") -> list[dict]:
    """[{stage, action, reasons, waits_on}] in the order the stages run."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    from tasks.data.sources import is_remote
    from tasks.errors import InputError
    from tasks.params import load_params

    if not Path(repo_path, "dvc.yaml").is_file():
        raise InputError(f"{repo_path}: no dvc.yaml here; give the pipeline's checkout")
    try:
        with contextlib.chdir(repo_path), Repo(".") as repo:  # stage names as in dvc.yaml, not relative paths
            forced = {"ingest"} if driver == "flow" and is_remote(load_params().ingest.source) else set()
            return _steps(repo, forced)
    except NotDvcRepoError as e:
        raise InputError(f"{repo_path}: {e}") from None


def _steps(repo, forced: set[str]) -> list[dict]:
    import networkx as nx

    from tasks.registry.dvc_files import locked_stages, read_lock

    status = repo.status()
    locked = locked_stages(read_lock())
    graph = repo.index.graph  # edges point from a stage to the stages it depends on
    steps, upstream_runs = [], set()
    for stage in reversed(list(nx.topological_sort(graph))):
        name = stage.addressing
        own = _reasons(stage, status.get(name, []))
        if own and name not in locked:
            own = ["never run here (no entry in dvc.lock)"]
        if name in forced:
            own.insert(0, "forced by the flow: a URL source may change without DVC seeing it")
        feeding = sorted(u.addressing for u in graph.successors(stage) if u.addressing in upstream_runs)
        if own and (name in forced or not _restorable(repo, stage)):
            action = RUN
        elif own:
            action = RESTORE
        elif feeding:
            action, own = MAYBE, [f"runs if {u} writes different outputs" for u in feeding]
        else:
            action = SKIP
        if action != SKIP:
            upstream_runs.add(name)
        steps.append({"stage": name, "action": action, "reasons": own,
                      "waits_on": feeding if action == MAYBE else []})
    return steps


def will_run(steps: list[dict], rewritten: set[str]) -> list[str]:
    """The stages a run executes, given the stages whose outputs it turned out to change."""
    return [s["stage"] for s in steps
            if s["action"] == RUN or (s["action"] == MAYBE and set(s["waits_on"]) & rewritten)]


def markdown(steps: list[dict], driver: str) -> str:
    lines = [f"# Run plan ({driver})\n", "| stage | action | why |", "|---|---|---|"]
    lines += [f"| {s['stage']} | {s['action']} | {'; '.join(s['reasons'])} |" for s in steps]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", nargs="?", default=".")
    ap.add_argument("--driver", choices=["dvc", "flow"], default="dvc",
                    help="dvc: `dvc repro`; flow: the Prefect flow (forces ingest of a URL source)")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    args = ap.parse_args(argv)
    steps = run_main(lambda: plan(args.repo, args.driver))
    if args.json:
        print(json.dumps(steps, indent=2))
        return
    width = max(len(s["stage"]) for s in steps)
    for s in steps:
        print(f"{s['stage']:<{width}}  {s['action']:<19}  {'; '.join(s['reasons'])}".rstrip())


if __name__ == "__main__":
    main()
