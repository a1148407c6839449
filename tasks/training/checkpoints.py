"""Checkpoints a crash cannot spoil: completion markers, newest-good selection, retention, RNG states.

    tag = step_tag(global_step)                      # "step00000120": tags sort by step
    engine.save_checkpoint(run_dir, tag, client_state=state, save_latest=False)
    save_rank_state(run_dir / tag, rank, loop)       # every rank: its random generators and counters
    mark_complete(run_dir / tag)                     # rank 0, after a barrier: every file's sha256
    tag = newest_complete(run_dir)                   # resume: the newest checkpoint whose files all check
    prune(run_dir, keep_last=2, keep={best_tag})     # rank 0: retention

A checkpoint counts only once `complete.json` lists the sha256 of every file
it holds, written last and atomically. A checkpoint cut short by a crash has
no marker; one whose bytes changed afterwards (a truncated copy, a bad disk)
fails its hashes. Either way it is skipped, with a warning naming it, for the
newest one that checks, so training resumes from the last good state.
DeepSpeed's own `latest` pointer is not used: it is written before the
files are known to be whole.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from tasks.data.tables import atomic_path, sha256_file

MARKER = "complete.json"
TAG = re.compile(r"^step(\d{8})$")


def step_tag(global_step: int) -> str:
    return f"step{global_step:08d}"


def tags(run_dir: Path) -> list[str]:
    """Checkpoint folders in run_dir, oldest first."""
    if not run_dir.is_dir():
        return []
    return sorted(d.name for d in run_dir.iterdir() if d.is_dir() and TAG.match(d.name))


def _files(tag_dir: Path) -> list[Path]:
    return sorted(p for p in tag_dir.rglob("*") if p.is_file() and p.name != MARKER)


def mark_complete(tag_dir: Path, extra: dict | None = None) -> None:
    """Record every file of a finished checkpoint with its size and sha256 (rank 0, after a barrier)."""
    files = {str(p.relative_to(tag_dir)): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _files(tag_dir)}
    with atomic_path(tag_dir / MARKER) as tmp:
        tmp.write_text(json.dumps({"files": files, **(extra or {})}, indent=1, sort_keys=True))


def problem(tag_dir: Path) -> str | None:
    """Why a checkpoint cannot be used, or None when every file is there and unchanged."""
    try:
        record = json.loads((tag_dir / MARKER).read_text())
    except FileNotFoundError:
        return "no completion marker (the run stopped while writing it)"
    except (json.JSONDecodeError, OSError) as e:
        return f"unreadable completion marker ({e})"
    for name, want in record.get("files", {}).items():
        path = tag_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {want['bytes']} were written"
        if sha256_file(path) != want["sha256"]:
            return f"{name} changed after it was written (sha256 differs)"
    return None


def newest_complete(run_dir: Path, warn=print) -> str | None:
    """The newest checkpoint that checks, warning about each newer one skipped."""
    for tag in reversed(tags(run_dir)):
        why = problem(run_dir / tag)
        if why is None:
            return tag
        warn(f"train: skipping checkpoint {run_dir / tag}: {why}")
    return None


def record(tag_dir: Path) -> dict:
    """What mark_complete stored besides the file list (world size, step, ...)."""
    return {k: v for k, v in json.loads((tag_dir / MARKER).read_text()).items() if k != "files"}


def prune(run_dir: Path, keep_last: int, keep: set[str]) -> list[str]:
    """Delete all but the newest keep_last complete checkpoints and those in `keep` (the best); also
    incomplete ones older than the newest complete. Returns the deleted tags."""
    all_tags = tags(run_dir)
    complete = [t for t in all_tags if (run_dir / t / MARKER).exists()]
    newest = complete[-1] if complete else None
    kept = set(complete[-keep_last:]) | keep
    gone = [t for t in all_tags if t not in kept and (t in complete or (newest and t < newest))]
    for t in gone:
        shutil.rmtree(run_dir / t, ignore_errors=True)
    return gone


def save_rank_state(tag_dir: Path, rank: int, loop: dict) -> None:
    """This rank's own state: its random generators (dropout masks) and its loop counters (partial
    loss sums), which DeepSpeed's client_state cannot hold since rank 0 alone writes that. A
    safetensors file (the generators as byte tensors, the counters as JSON metadata): nothing to unpickle."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    tag_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(tag_dir / f"rank{rank}.safetensors") as tmp:
        save_file(state, str(tmp), metadata={"loop": json.dumps(loop)})


def rank_loop(tag_dir: Path, rank: int) -> dict:
    """A rank's loop counters, read without restoring anything."""
    with safe_open(str(tag_dir / f"rank{rank}.safetensors"), framework="pt") as f:
        return json.loads(f.metadata()["loop"])


def load_rank_state(tag_dir: Path, rank: int) -> dict:
    """Restore this rank's generators; returns its loop counters."""
    state = load_file(str(tag_dir / f"rank{rank}.safetensors"))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    return rank_loop(tag_dir, rank)


def fingerprint(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]
