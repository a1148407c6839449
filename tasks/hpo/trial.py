"""One trial as one DVC experiment: `dvc exp run` up to evaluate, in a checkout of its own.

    slot = Slot(repo, 0)                         # .dvc/tmp/hpo/slots/0: a clone sharing git objects and DVC cache
    result = slot.run(baseline, name, overrides, env, log)   # -> TrialResult; the experiment's ref lands in repo

Why a checkout per parallel slot rather than DVC's own parallel queue: `dvc
queue start -j N` races on git's packed refs and DVC's lock (LockError, runs
failing with no log: open DVC issues), and two workspace experiments in one
checkout (or in two git worktrees, which share `refs/exps/exec/*`) overwrite
each other's state. A slot is a `git clone --shared` of the repo with the
repo's DVC cache as its cache: each trial has its own DVC lock, index and
executor refs; its data and outputs go to the one cache (stages a trial does
not change are restored from DVC's run cache, not rerun); and when it ends its
experiment ref is pushed into the repo, where `dvc exp show` and `dvc exp
apply` see it like any other.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tasks.registry.git import author, git

TARGET = "evaluate"  # a trial runs the DAG up to evaluate: register is the applied winner's, on a branch


class TrialFailed(RuntimeError):
    """The trial's `dvc exp run` failed; the message carries its error lines."""


@dataclass
class TrialResult:
    experiment: str  # the DVC experiment's name
    ref: str  # its git ref in the repo (refs/exps/...)
    history: list[dict]  # training's per-epoch entries
    pruned_at_epoch: int | None
    metrics: dict  # evaluate's test metrics (for the record only: the search never optimises them)


def free_port() -> int:
    """A TCP port free now, for one trial's DeepSpeed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dvc(*args: str, cwd: Path, env: dict | None = None, log=None) -> tuple[int, list[str]]:
    """A DVC command in `cwd`, its output lines passed to `log` as they come."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=cwd, env=os.environ | (env or {}),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            if log:
                log(line)
    return proc.wait(), lines


def cache_dir(repo: Path) -> Path:
    out = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=repo, capture_output=True, text=True,
                         check=True).stdout.strip()
    return Path(out)


class Slot:
    """A reusable checkout for one trial at a time: `Slot.take(repo)` locks the first free one (an advisory
    flock, dropped by the kernel if its holder dies), so several searches in one checkout never share one."""

    def __init__(self, repo: Path, index: int):
        self.repo, self.index = repo, index
        self.path = repo / ".dvc" / "tmp" / "hpo" / "slots" / str(index)
        self._lock = None

    @classmethod
    def take(cls, repo: Path, most: int = 64) -> Slot:
        for index in range(most):
            slot = cls(repo, index)
            slot.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(slot.path.parent / f"{index}.lock", "w")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            slot._lock = handle
            return slot
        raise RuntimeError(f"no free trial checkout among {most} under {repo / '.dvc/tmp/hpo/slots'}")

    def release(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def prepare(self, baseline: str) -> None:
        """The clone (made once: its objects are the repo's, through git's alternates) at the baseline."""
        if not (self.path / ".git").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            git("clone", "--quiet", "--shared", "--no-checkout", str(self.repo), str(self.path), cwd=self.repo)
        git("checkout", "--quiet", "--force", "--detach", baseline, cwd=self.path)
        git("clean", "-fdq", cwd=self.path)  # untracked leftovers of the last trial; ignored outputs stay
        if not (self.path / ".dvc" / "config.local").exists():  # after the checkout: before it, DVC would
            # find the repo around the slot and set that repo's cache instead
            subprocess.run([sys.executable, "-m", "dvc", "config", "--local", "cache.dir",
                            str(cache_dir(self.repo))], cwd=self.path, check=True, capture_output=True)

    def run(self, baseline: str, name: str, overrides: list[str], env: dict, log=None) -> TrialResult:
        self.prepare(baseline)
        args = ["exp", "run", "--name", name, *[a for o in overrides for a in ("-S", o)], TARGET]
        code, lines = dvc(*args, cwd=self.path, env=env, log=log)
        if code != 0:
            first = next((i for i, ln in enumerate(lines) if ln.startswith(("ERROR", "error", "Error", "Traceback"))),
                         max(0, len(lines) - 5))
            errors = lines[first:first + 15]  # the stage's own error and its details, then DVC's line
            message = f"experiment {name}: `dvc {' '.join(args)}` failed:\n" + "\n".join(errors)
            saved = self.save_failed(baseline, name, message)
            raise TrialFailed(message + (f"\n(listed by `dvc exp show` as {saved})" if saved else ""))
        ref = self.experiment_ref(name)
        git("push", "--quiet", "origin", f"{ref}:{ref}", cwd=self.path)  # into the repo, beside its other exps
        return read_result(self.repo, name, ref, env.get("DAGTRAIN_TRIAL_STATUS"))

    def save_failed(self, baseline: str, name: str, message: str) -> str | None:
        """A failed trial as an experiment of its own, `<name>-failed`: the params DVC set, no metrics (the
        baseline's would be a lie) and dvc.lock as it was (no stage ran with these params), the error in its
        commit message. `dvc exp save` would instead record the failed stage in dvc.lock as if it had run."""
        import yaml

        from tasks.params import Params

        try:
            p = Params.model_validate(yaml.safe_load(git("show", f"{baseline}:params.yaml", cwd=self.path)))
            failed = f"{name}-failed"
            git("read-tree", baseline, cwd=self.path)  # the index: the baseline, then the trial's params
            git("add", "params.yaml", cwd=self.path)
            git("rm", "-q", "--cached", "--ignore-unmatch", str(p.paths.metrics),
                f"{p.paths.train_live}/metrics.json", cwd=self.path)
            tree = git("write-tree", cwd=self.path)
            who, email = author(self.repo)
            commit = git("-c", f"user.name={who}", "-c", f"user.email={email}", "commit-tree", tree, "-p", baseline,
                         "-m", f"{failed}: trial failed\n\n{message[-3000:]}", cwd=self.path)
            ref = f"refs/exps/{baseline[:2]}/{baseline[2:]}/{failed}"  # DVC's layout: its baseline, its name
            git("push", "--quiet", "--force", "origin", f"{commit}:{ref}", cwd=self.path)
            return failed
        except Exception:  # the record of a failure must not hide the failure itself
            return None
        finally:
            git("read-tree", "HEAD", cwd=self.path, check=False)

    def experiment_ref(self, name: str) -> str:
        refs = git("for-each-ref", "--format=%(refname)", "refs/exps", cwd=self.path).split()
        found = [r for r in refs if r.rsplit("/", 1)[-1] == name]
        if not found:
            raise TrialFailed(f"experiment {name}: finished, but no ref refs/exps/.../{name} was made")
        return found[0]


def find_experiment(repo: Path, name: str) -> str | None:
    refs = git("for-each-ref", "--format=%(refname)", "refs/exps", cwd=repo).split()
    return next((r for r in refs if r.rsplit("/", 1)[-1] == name), None)


def read_result(repo: Path, name: str, ref: str, status_file: str | None = None) -> TrialResult:
    """The trial's figures, read from its experiment commit (the history and metrics are in git there)."""
    import yaml

    from tasks.params import Params

    p = Params.model_validate(yaml.safe_load(git("show", f"{ref}:params.yaml", cwd=repo)))
    history = json.loads(git("show", f"{ref}:{p.paths.train_history}", cwd=repo))
    metrics = json.loads(git("show", f"{ref}:{p.paths.metrics}", cwd=repo))
    live = json.loads(git("show", f"{ref}:{p.paths.train_live}/metrics.json", cwd=repo))
    pruned = live.get("pruned_at_epoch")
    if pruned is None and status_file and Path(status_file).exists():
        pruned = json.loads(Path(status_file).read_text()).get("pruned_at_epoch")
    return TrialResult(name, ref, history, pruned, metrics)
