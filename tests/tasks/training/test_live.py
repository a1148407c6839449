"""training.live: a progress bar on a terminal only, and DeepSpeed's start-up lines only if train.verbose.

A real run's output both ways is checked in tests/e2e/test_training_output.py.
"""

from __future__ import annotations

import fcntl
import logging
import os
import select
import struct
import termios

from tasks.training.live import deepspeed_output, progress


def open_terminal(rows: int = 24, columns: int = 120) -> tuple[int, int]:
    """A pseudo-terminal's two ends (fds), with a window size as a terminal emulator sets one (a bare pty has
    0x0, on which tqdm draws a bar of no width)."""
    master, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    return master, follower


def run_bar(file, rank: int = 0) -> None:
    bar = progress(10, 2, "epoch 1/3", rank, file=file)  # resumed at batch 2
    for _ in range(8):
        bar.update()
    bar.close()


def read_all(fd: int) -> str:
    out = b""
    while select.select([fd], [], [], 0.2)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the other end is closed and drained
            break
        if not chunk:
            break
        out += chunk
    return out.decode()


def test_the_bar_is_drawn_on_a_terminal_and_a_log_gets_nothing_of_it(tmp_path):
    master, follower = open_terminal()  # a real terminal, as `dvc repro` run by hand has
    with os.fdopen(follower, "w") as tty:
        run_bar(tty)
        run_bar(tty, rank=1)  # one bar for the run: rank 0's
    drawn = read_all(master)
    os.close(master)
    assert "epoch 1/3" in drawn and "2/10" in drawn and "\r" in drawn  # redrawn in place
    assert drawn.count("epoch 1/3:   0%") == 0 and drawn.count("epoch 1/3:  20%") == 1  # rank 0 only, from 2
    log = tmp_path / "stage.log"  # a file, a pipe to Prefect or CI: not a terminal
    with log.open("w") as f:
        run_bar(f)
    assert log.read_text() == ""  # the per-epoch line train prints is the log's progress


def test_deepspeeds_own_lines_only_when_verbose(capsys):
    from deepspeed.utils.logging import logger

    capsys.readouterr()  # what importing DeepSpeed printed
    level = logger.level
    try:
        with deepspeed_output(False):
            print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        assert capsys.readouterr().out == ""
        assert logger.getEffectiveLevel() == logging.WARNING  # DeepSpeed's default: its warnings still show
        with deepspeed_output(True):
            print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        assert "built successfully" in capsys.readouterr().out
        assert logger.isEnabledFor(logging.INFO) and all(h.level <= logging.INFO for h in logger.handlers)
    finally:
        logger.setLevel(level)
        for h in logger.handlers:
            h.setLevel(level)
