"""One dvc.yaml stage as one Prefect task: `dvc repro --single-item <stage>`, watched.

    from flows.stages import stage_task
    train = stage_task("train")           # a Prefect task; call it inside a flow

The stage runs as a subprocess in its own process group, so DVC decides what is
stale and writes dvc.lock exactly as `dvc repro` does. Its output reaches the
Prefect run log line by line while it runs (rank 0's DeepSpeed output
included). Training's per-epoch lines update a progress artifact. On timeout or
cancellation the whole group (DVC, the DeepSpeed launcher, its ranks) gets
SIGTERM (training checkpoints on it), then SIGKILL after a grace period.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.runtime import flow_run

from tasks.errors import EXIT_TRANSIENT
from tasks.registry.dvc_files import read_lock, stage_outs

GRACE_S = 20  # after SIGTERM, before SIGKILL: time for training to write its checkpoint
EPOCH_LINE = re.compile(r"^train: epoch (\d+)/(\d+)\b(.*)")


class StageFailed(RuntimeError):
    """A stage's command failed; the message carries the stage's own error lines first."""


class TransientStageFailure(StageFailed):
    """A stage failed on a transient I/O error (exit code 75): worth a retry."""


def error_lines(lines: list[str]) -> list[str]:
    """The stage's error lines, with the indented lines that continue them (one per violation)."""
    errors, inside = [], False
    for ln in lines:
        if ln.startswith(("error", "ERROR")):
            errors.append(ln)
            inside = True
        elif inside and ln.startswith("  "):
            errors.append(ln)
        else:
            inside = False
    return errors


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def stop_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """SIGTERM to the stage's whole process group; SIGKILL to what is left after `grace_s`.

    The wait is for the whole group, not for DVC alone: DVC exits at once on SIGTERM, while the
    DeepSpeed ranks are still writing their preemption checkpoint.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()  # reap the group leader, or its zombie keeps the group alive
        if not group_alive(proc.pid):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)


class EpochProgress:
    """A Prefect progress artifact that follows training's `train: epoch N/M ...` lines."""

    def __init__(self, stage: str):
        self.artifact_id = None
        if stage == "train":
            self.artifact_id = create_progress_artifact(0.0, key="training-progress",
                                                        description="training: waiting for the first epoch")

    def line(self, text: str) -> None:
        m = EPOCH_LINE.match(text)
        if self.artifact_id is not None and m:
            done, total = int(m.group(1)), int(m.group(2))
            update_progress_artifact(self.artifact_id, 100.0 * done / total,
                                     description=f"epoch {done}/{total}:{m.group(3)}")


def run_dvc_stage(stage: str, repo: str = ".", timeout_s: float = 3600, force: bool = False) -> dict:
    """`dvc repro --single-item <stage>` as a subprocess, its lines in the run log; a summary back."""
    logger = get_run_logger()
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
                        "PREFECT__FLOW_RUN_ID": str(flow_run.get_id() or "")}
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    progress = EpochProgress(stage)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    timed_out = threading.Event()

    def on_timeout():
        timed_out.set()
        stop_group(proc)

    timer = threading.Timer(timeout_s, on_timeout)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                lines.append(line)
                progress.line(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # cancelled, or the flow crashed while the stage was running
            stop_group(proc)
    if rc != 0:
        if timed_out.is_set():
            raise StageFailed(f"stage {stage!r} killed after its {timeout_s:.0f} s timeout")
        message = f"stage {stage!r} failed:\n" + "\n".join(error_lines(lines) or lines[-5:])
        if re.search(rf"exited with {EXIT_TRANSIENT}\b", "\n".join(lines)):
            raise TransientStageFailure(message)
        raise StageFailed(message)
    text = "\n".join(lines)
    status = ("ran" if f"Running stage '{stage}'" in text
              else "restored" if "is cached - skipping run" in text else "skipped")
    return {"stage": stage, "status": status, "seconds": round(time.monotonic() - start, 1),
            "outs": stage_outs(read_lock(repo), stage)}


def retry_if_transient(task, task_run, state) -> bool:
    return isinstance(state.result(raise_on_failure=False), TransientStageFailure)


def stage_task(stage: str, **options):
    """The Prefect task for one stage (named after it); ingest retries transient I/O errors."""
    if stage == "ingest":
        options = {"retries": 3, "retry_delay_seconds": [2, 10, 30],
                   "retry_condition_fn": retry_if_transient} | options
    return task(run_dvc_stage, name=stage, **options)
