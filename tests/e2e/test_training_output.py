"""What train prints, for real (DeepSpeed's launcher, 2 CPU ranks over gloo), on a terminal with train.verbose.

The other corner, a log (a pipe) with the default train.verbose: false, is the
pipeline's own `dvc repro` in tests/e2e/test_pipeline.py: a plain line per
epoch, no progress bar, none of DeepSpeed's start-up lines. Here both switch
on: the bar (stdout is a terminal, through the launcher, in rank 0) and
DeepSpeed's lines (its launcher's INFO log, the accelerator detection, the
ranks' notices, deepspeed.initialize's INFO log).

Slow: `pytest -m slow tests/e2e/test_training_output.py` (about a minute).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import GIT_ENV, copy_repo, run, set_params
from tests.e2e.test_pipeline import NOISE
from tests.tasks.training.test_live import open_terminal

pytestmark = pytest.mark.slow


def on_a_terminal(cmd: list[str], cwd, timeout: float = 300) -> tuple[int, str]:
    """Run cmd with stdout and stderr a pseudo-terminal, as `dvc repro` typed by hand has them; its exit
    status and everything it (and every process it started) printed."""
    master, follower = open_terminal()
    proc = subprocess.Popen(cmd, cwd=cwd, env=os.environ | GIT_ENV, stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, start_new_session=True)
    os.close(follower)
    out, end = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has exited
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(timeout=30), out.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)


@pytest.fixture(scope="module")
def verbose_on_a_terminal(tmp_path_factory) -> str:
    repo = copy_repo(tmp_path_factory.mktemp("output") / "repo", master_port=29790)
    set_params(repo, {"train.model": "mlp", "train.epochs": 1, "augment.copies": 0, "train.verbose": True})
    run(["dvc", "repro", "augment"], repo)
    code, out = on_a_terminal([sys.executable, "-m", "tasks.train"], repo)
    assert code == 0, out[-4000:]
    return out


def test_train_verbose_brings_deepspeeds_start_up_lines_back(verbose_on_a_terminal):
    out = verbose_on_a_terminal
    cpu_only = ("Setting accelerator to CPU", "built successfully")  # a GPU is detected without a word
    for line in NOISE:
        if torch.cuda.is_available() and line in cpu_only:
            continue
        assert line in out, line


def test_a_terminal_gets_the_progress_bar_and_the_epoch_line(verbose_on_a_terminal):
    out = verbose_on_a_terminal
    assert "epoch 1/1:" in out and "it/s]" in out and "\r" in out  # tqdm's bar, redrawn in place
    assert "train: epoch 1/1 train_loss" in out
