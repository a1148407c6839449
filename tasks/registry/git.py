"""The registry's git plumbing: one runner, one identity, commits of named paths only, tags, notes, the lock.

    from tasks.registry.git import git, author, commit_paths
    git("rev-parse", "HEAD", cwd=repo)              # stdout; a failure is an InputError naming the command
    commit_paths(repo, "Register digits v0.0.3", ["dvc.lock", "registry/lineage.json"])   # sha, or None
    with registry_lock(repo): ...                   # one writer of versions, stages, commits and notes

Used by the register stage (its state commit and GTO tags), by the registry (stage tags, decision
notes) and by the flow's trace (a run's commit on its branch, the push of tags and notes). A machine
with no git identity (a CI runner, a fresh worker) commits and tags as FALLBACK_AUTHOR.
"""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tasks.errors import InputError

FALLBACK_AUTHOR = ("dagtrain", "dagtrain@localhost")  # for machines with no git identity
LOCK_FILE = "dagtrain-registry.lock"  # in the git common dir, shared by worktrees
LOCK_TIMEOUT_S = 600


def git(*args: str, cwd: str | Path = ".", check: bool = True) -> str:
    """`git ARGS` in `cwd`; its stdout, stripped. With check, a failure raises, naming the command."""
    res = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise InputError(f"git {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


def author(repo: str | Path = ".") -> tuple[str, str]:
    """git's own identity if configured, else a fallback so unattended runs can commit and tag."""
    email = os.environ.get("GIT_AUTHOR_EMAIL") or git("config", "user.email", cwd=repo, check=False)
    name = os.environ.get("GIT_AUTHOR_NAME") or git("config", "user.name", cwd=repo, check=False)
    return (name, email) if name and email else FALLBACK_AUTHOR


def identity(repo: str | Path = ".") -> list[str]:
    """`git -c` options that commit as `author(repo)`."""
    name, email = author(repo)
    return ["-c", f"user.name={name}", "-c", f"user.email={email}"]


def changed_gitignores(repo: str | Path = ".") -> list[str]:
    """The .gitignore files DVC wrote for its outputs and git does not hold yet: modified, new, or new and
    already staged (`core.autostage`), never ones git itself ignores."""
    glob = ":(glob)**/.gitignore"
    listed = git("ls-files", "-mo", "--exclude-standard", "--", glob, cwd=repo).splitlines()
    staged = git("diff", "--cached", "--name-only", "--", glob, cwd=repo, check=False).splitlines()
    return sorted(set(listed + staged))


def commit_paths(repo: str | Path, message: str, paths: list[str]) -> str | None:
    """Commit only `paths` (whatever else the user staged stays staged); the new commit, None if nothing
    changed."""
    paths = [str(p) for p in paths]
    git("add", "--", *paths, cwd=repo)
    if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=repo).returncode == 0:
        return None
    git(*identity(repo), "commit", "-q", "-m", message, "--", *paths, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def read_at(commit: str, path: str | Path, repo: str | Path = ".") -> str | None:
    """A file as committed at `commit`; None where it is not."""
    return git("show", f"{commit}:{Path(path).as_posix()}", cwd=repo, check=False) or None


def read_bytes_at(commit: str, path: str | Path, repo: str | Path = ".") -> bytes | None:
    """A file's exact bytes as committed at `commit`; None where it is not."""
    res = subprocess.run(["git", "show", f"{commit}:{Path(path).as_posix()}"], cwd=repo, capture_output=True)
    return res.stdout if res.returncode == 0 else None


def newest_tag_time(repo: str | Path, *patterns: str) -> int:
    """The tagger time (unix seconds) of the newest tag matching any of `patterns`; 0 when none does."""
    times = git("for-each-ref", "--format=%(taggerdate:unix)", *(f"refs/tags/{p}" for p in patterns),
                cwd=repo).split()
    return max((int(t) for t in times if t.isdigit()), default=0)


def read_note(commit: str, ref: str, repo: str | Path = ".") -> str:
    """The git note of `commit` under refs/notes/`ref`; "" when there is none."""
    return git("notes", f"--ref={ref}", "show", commit, cwd=repo, check=False)


def append_note(commit: str, text: str, ref: str, repo: str | Path = ".") -> None:
    """Append `text` to the note of `commit` under refs/notes/`ref` (as `author(repo)`)."""
    git(*identity(repo), "notes", f"--ref={ref}", "append", "-m", text, commit, cwd=repo)


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


EXPERIMENT_ENV = "DVC_EXP_NAME"  # set by DVC for every stage of `dvc exp run` (workspace, --temp, --queue)


def registry_repo() -> str:
    """Where the registry's tags are: here, or under `dvc exp run` the user's repository (DVC_ROOT), as a
    temporary or queued experiment runs in a copy of its own without them."""
    return os.environ.get("DVC_ROOT", ".") if os.environ.get(EXPERIMENT_ENV) else "."
