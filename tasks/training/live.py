"""What a training run shows while it runs (rank 0): a progress bar or plain lines, DVCLive, DeepSpeed's own lines.

    live = Live(live_dir, state.history)   # rewrites the log from the checkpoint's history
    live.log(entry)                        # one epoch's figures
    bar = progress(len(order), state.batch, "epoch 1/8", rank)   # a bar on a terminal only
    with deepspeed_output(params.verbose): deepspeed.init_distributed()

A bar redraws itself with carriage returns: on a terminal that is a live
count, in a log (Prefect, CI, a file) a screenful of junk per epoch. So the
bar is drawn only when stdout is a terminal (tqdm's own `disable=None`), and a
log gets the plain `train: epoch N/M ...` line train prints after each epoch.
The launcher's side of DeepSpeed's noise (its INFO log, the accelerator
detection) is kept out in training/launch.py; this is the ranks' side.
"""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Iterator, TextIO

PLOT_ONLY = ("lr", "seconds")  # the learning rate and an epoch's time: curves, not a run's result


class Live:
    """The log is rewritten from the checkpoint's history on every start, so after a resume it holds exactly
    the epochs the model has seen."""

    def __init__(self, live_dir: Path, history: list[dict]):
        from dvclive import Live as DVCLive

        self.live = DVCLive(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        for entry in history:
            self.log(entry)

    def log(self, entry: dict) -> None:
        for k, v in entry.items():
            if k != "epoch":
                self.live.log_metric(k, v)
        for k in PLOT_ONLY:  # plotted per step, but no column of `dvc metrics show` / `dvc exp show`
            self.live.summary.pop(k, None)
        self.live.next_step()

    def warm_start(self, figures: dict) -> None:
        """train.epochs 0: no epoch to plot; the summary holds the loaded model's validation figures."""
        self.live.summary.update(figures)
        self.live.make_summary()
        (Path(self.live.plots_dir) / "metrics").mkdir(parents=True, exist_ok=True)  # a DVC output, empty

    def mark(self, key: str, value) -> None:
        """A figure of the run as a whole in DVCLive's summary (`dvc exp show` lists it), e.g. a pruned epoch."""
        self.live.summary[key] = value
        self.live.make_summary()


def progress(total: int, initial: int, desc: str, rank: int, file: TextIO | None = None):
    """tqdm's bar over an epoch's batches: on rank 0, and only when `file` (stdout) is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False, file=file or sys.stdout,
                disable=True if rank != 0 else None)  # None: tqdm disables itself on a non-terminal


@contextlib.contextmanager
def deepspeed_output(verbose: bool) -> Iterator[None]:
    """Around deepspeed.init_distributed in every rank. verbose (train.verbose): DeepSpeed's logger at INFO
    (its default is WARNING), so deepspeed.initialize's INFO lines show too. Otherwise its bare print of the
    shared-memory op ("... built successfully", once per rank and run) is kept out of the log; its warnings
    and errors still show, through its logger and stderr."""
    from deepspeed.utils.logging import set_log_level_from_string

    if verbose:
        set_log_level_from_string("info")  # the logger and its handler
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield
