"""What every rank must decide together while training: stop for a SIGTERM, stop for a non-finite loss.

    preemption = Preemption()               # SIGTERM sets a flag
    agreed = Agreement(preemption, rank)    # then, in the loop:
    agreed.post(loss.item(), "epoch 2, batch 7")
    if agreed.stop: ...                     # checkpoint, exit 143
    agreed.sync()                           # before a checkpoint: raises NonFiniteLoss if any rank saw one
"""

from __future__ import annotations

import signal

import numpy as np
import torch

from tasks.errors import InputError

PREEMPTED = 143  # exit status after a SIGTERM checkpoint (128 + SIGTERM), as a shell would report it


class NonFiniteLoss(InputError):
    """The loss became NaN or infinite: stop, and checkpoint or register nothing from this state."""


class Preemption:
    """SIGTERM sets a flag; the loop checkpoints at the next step all ranks agree on, then exits."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


class Agreement:
    """What all ranks must decide together: stop for a SIGTERM, stop for a non-finite loss. A small
    all-reduce agrees on it every `every` steps, run while the next steps compute (a blocking collective
    per step costs a quarter of a small model's step on CPU ranks), and a blocking one before every
    checkpoint (sync). So a decision lands a few steps late, on every rank at the same step."""

    def __init__(self, preemption: Preemption, rank: int, every: int = 16):
        self.preemption, self.rank, self.every = preemption, rank, every
        self.pending, self.flags, self.steps = None, torch.zeros(2), 0
        self.bad = ""  # where this rank first saw a non-finite loss
        self.stop = False  # a SIGTERM reached some rank: checkpoint at the next optimizer step, then exit

    def post(self, loss: float, where: str) -> None:
        if not np.isfinite(loss) and not self.bad:
            self.bad = f"the loss is {loss} at {where} on rank {self.rank}"
        self.steps += 1
        if self.steps % self.every == 0:
            self._start()

    def sync(self) -> None:
        """Agree on everything up to now (before a checkpoint, at the end of an epoch)."""
        self._start()
        self._settle()

    def _start(self) -> None:
        self._settle()
        self.flags = torch.tensor([float(self.preemption.requested), float(bool(self.bad))])
        self.pending = torch.distributed.all_reduce(self.flags, op=torch.distributed.ReduceOp.MAX, async_op=True)

    def _settle(self) -> None:
        if self.pending is None:
            return
        self.pending.wait()
        self.pending = None
        self.stop = self.stop or bool(self.flags[0])
        if self.flags[1]:
            raise NonFiniteLoss(f"train: {self.bad or 'the loss is not finite on another rank'}; lower "
                                f"train.optimizer.lr, set train.grad_clip, or check the data; the last good "
                                f"checkpoint and model are kept")
