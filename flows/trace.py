"""What an unattended run leaves behind: a commit on a chosen branch, and the data on a DVC remote.

    branch:    the run's dvc.lock, params.yaml and metrics, committed to a branch
               of the worker's checkout (created from HEAD the first time)
    overrides: {"train.epochs": 5}: params.yaml keys set for one run, checked by the
               typed params first; the run's commit records them (dvc.lock holds
               them too), and a second commit puts params.yaml back afterwards
    push:      `dvc push` of data, checkpoints and model to a DVC remote (the
               default remote, or a named one), and optionally `git push` of the
               branch, the registry's tags and its decision notes, so that any
               registered version can be restored elsewhere with `git clone` +
               `dvc pull`

    from flows import trace
    trace.switch_branch(repo, "pipeline-runs")
    original = trace.apply_overrides(repo, {"train.epochs": 5})
    commit_paths(repo, "Pipeline run x", trace.tracked_outputs(repo))   # tasks/registry/git.py

Commits, the identity they are made with (git's own, or the registry's fallback) and every other git
call go through tasks/registry/git.py, the one place the register stage and the registry use too.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from tasks.errors import InputError
from tasks.params import load_params
from tasks.registry import NOTES_REF
from tasks.registry.dvc_files import LOCK
from tasks.registry.git import changed_gitignores, commit_paths, git

PARAMS = "params.yaml"


def dvc(repo: Path, *args: str) -> str:
    res = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"dvc {' '.join(args)} failed in {repo}:\n{(res.stdout + res.stderr).strip()[-2000:]}")
    return res.stdout.strip()


def switch_branch(repo: Path, branch: str) -> str:
    """Put the checkout on `branch` (made from HEAD the first time); returns the branch it was on."""
    if git("check-ref-format", "--branch", branch, cwd=repo, check=False) != branch:
        raise InputError(f"branch {branch!r} is not a valid git branch name")
    was = git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo)
    if was != branch:
        exists = git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repo, check=False)
        git("switch", *([branch] if exists else ["-c", branch]), cwd=repo)
    return was


def apply_overrides(repo: Path, overrides: dict[str, Any]) -> str:
    """Set dotted params.yaml keys (comments kept) after checking them; returns the file as it was."""
    path = repo / PARAMS
    original = path.read_text()
    yaml = YAML()
    yaml.width = 10_000  # never re-wrap a long line
    yaml.preserve_quotes = True  # a quoted value stays quoted: only the overridden lines change
    yaml.indent(mapping=2, sequence=4, offset=2)  # block lists as params.yaml writes them
    yaml.representer.add_representer(type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = yaml.load(original)
    unknown = []
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = doc
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            unknown.append(key)
        else:
            node[leaf] = value
    if unknown:
        raise InputError(f"overrides: {', '.join(map(repr, unknown))} not in {PARAMS} "
                         "(give dotted keys that exist, e.g. 'train.epochs')")
    buf = io.StringIO()
    yaml.dump(doc, buf)
    path.write_text(buf.getvalue())
    try:
        load_params(path)  # the typed params name any wrong value
    except InputError as e:
        path.write_text(original)
        raise InputError(f"overrides {overrides}: {e}") from None
    return original


def tracked_outputs(repo: Path) -> list[str]:
    """dvc.lock, params, and the outputs git keeps (cache: false: metrics, plots, reports)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as r:
        outs = [str(o.fs_path) for s in r.index.stages for o in s.outs if not o.use_cache]
    paths = [LOCK, PARAMS, *(str(Path(o).relative_to(repo.resolve())) for o in outs)]
    paths += changed_gitignores(repo)
    return [p for p in paths if (repo / p).exists()]


def restore_params(repo: Path, original: str, run_name: str) -> str | None:
    (repo / PARAMS).write_text(original)
    return commit_paths(repo, f"params.yaml back as it was before run {run_name}'s overrides", [PARAMS])


def push(repo: Path, dvc_remote: str | None, git_remote: str | None, branch: str | None) -> list[str]:
    """dvc push (data, checkpoints, model), then git push of the branch and tags if asked."""
    done = [dvc(repo, "push", *(["-r", dvc_remote] if dvc_remote else [])).splitlines()[-1]]
    if git_remote:
        ref = branch or git("rev-parse", "--abbrev-ref", "HEAD", cwd=repo)
        git("push", "-q", git_remote, ref, cwd=repo)
        git("push", "-q", git_remote, "--tags", cwd=repo)
        notes = git("rev-parse", "--verify", "--quiet", f"refs/notes/{NOTES_REF}", cwd=repo, check=False)
        if notes:  # the registry's decisions (tasks/registry/), which a plain push leaves behind
            git("push", "-q", git_remote, f"refs/notes/{NOTES_REF}", cwd=repo)
        done.append(f"git: pushed {ref}, tags{' and registry notes' if notes else ''} to {git_remote}")
    return done
