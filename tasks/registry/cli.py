"""The model registry from the command line: versions and stages (GTO git tags), policy, lineage both ways.

    python -m tasks.registry list [NAME]                  # versions, stages, metric, commit
    python -m tasks.registry show digits@prod             # metrics, lineage, decisions, model card
    python -m tasks.registry promote digits@v0.0.3        # checked against register's policy; a refusal exits 1
    python -m tasks.registry rollback digits              # the previous production version back
    python -m tasks.registry lineage digits@prod          # what made it (JSON), its parents back to scratch
    python -m tasks.registry children digits@v0.0.3       # versions fine-tuned from it (a line each)
    python -m tasks.registry trained-on 1f2e3d4c          # versions trained on that data hash / data version
    python -m tasks.registry --json show digits@v0.0.2    # any command: --json, --repo PATH
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tasks.errors import run_main
from tasks.params import load_params
from tasks.registry.git import read_at
from tasks.registry.lineage import children, lineage, trained_on
from tasks.registry.model_card import parent_line
from tasks.registry.policy import promote, rollback
from tasks.registry.versions import artifact_names, version_paths, versions


def parser() -> argparse.ArgumentParser:
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
    sub.add_parser("lineage", help="what made a version, and its parents").add_argument("spec")
    sub.add_parser("children", help="the versions fine-tuned from a version").add_argument("spec")
    p = sub.add_parser("trained-on", help="versions trained on a data hash")
    p.add_argument("hash")
    p.add_argument("--name")
    return ap


def print_show(spec: str, repo: str | Path) -> None:
    info = lineage(spec, repo)
    card_path = version_paths(info["commit"], repo).get("model_card", "registry/model_card.md")
    print(f"{info['artifact']} {info['version']} at {info['commit'][:8]} (registered {info['registered_at']})")
    print(f"  metrics: {json.dumps({k: round(v, 4) for k, v in (info['metrics'] or {}).items()})}")
    print(f"  data version {info['data_version']}; code {info['code_commit']}; flow run {info['prefect_flow_run_id']}")
    print(f"  {parent_line(info)}")
    if info.get("search"):
        s = info["search"]
        print(f"  the best trial of a search: study {s['study']} ({s['sampler']}), trial {s['trial']}, experiment "
              f"{s['experiment']}, {s['metric']} {s['value']:.4f}")
    for d in info["decisions"]:
        print(f"  {d['at']} {d['action']} {d.get('stage', '')}: {'yes' if d.get('promote') else 'no'} - {d['reason']}")
    card = read_at(info["commit"], card_path, repo)
    print("\n" + (card or f"(no model card at {card_path})"))


def answer(args: argparse.Namespace):
    """What the command returns (printed as JSON with --json)."""
    repo = args.repo
    if args.cmd == "list":
        return {n: versions(n, repo, missing_ok=args.name is None)
                for n in ([args.name] if args.name else artifact_names(repo))}
    if args.cmd in ("show", "lineage"):
        return lineage(args.spec, repo)
    if args.cmd == "promote":
        return promote(args.spec, args.stage, repo)
    if args.cmd == "rollback":
        return rollback(args.name, args.stage or load_params(Path(repo) / "params.yaml").register.stage, repo)
    if args.cmd == "children":
        return children(args.spec, repo)
    return trained_on(args.hash, args.name, repo)


def print_text(args: argparse.Namespace, out) -> None:
    """The answer for people (list, promote, rollback, children, trained-on)."""
    if args.cmd == "list":
        for n, vs in out.items():
            for v in vs:
                print(f"{n}@{v['version']}  {v['commit'][:8]}  {v['created_at']}  {','.join(v['stages'])}")
    elif args.cmd in ("promote", "rollback"):
        moved = args.cmd == "rollback" or out["promote"]
        print(f"{out['artifact']} {out['version']}: {'now in' if moved else 'not promoted to'} "
              f"{out['stage']}: {out['reason']}")
    elif args.cmd == "children":
        for v in out:
            print(f"{v['artifact']}@{v['version']}  {v['commit'][:8]}  {v['created_at']}  "
                  f"{','.join(v['stages']) or '-'}  derived with {v['spec']}")
        if not out:
            print(f"no registered version was fine-tuned from {args.spec}")
    else:
        for v in out:
            print(f"{v['artifact']}@{v['version']}  {v['commit'][:8]}  {'; '.join(v['matches'])}")
        if not out:
            print(f"no registered version was trained on {args.hash}")


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)

    def body():
        if args.cmd == "show" and not args.json:
            return print_show(args.spec, args.repo)
        out = answer(args)
        if args.json or args.cmd == "lineage":
            print(json.dumps(out, indent=2))
        else:
            print_text(args, out)
        if args.cmd == "promote" and not out["promote"]:
            sys.exit(1)

    run_main(body)
