"""What every rank must decide together while training: stop for a SIGTERM, stop for a non-finite loss.

    preemption = Preemption()               # SIGTERM sets a flag
    agreed = Agreement(preemption, rank)    # then, in the loop:
    agreed.post(loss_sum, "epoch 2, batch 7")  # loss_sum: the epoch's running sum, on the device
    if agreed.stop: ...                     # checkpoint, exit 143
    agreed.sync(loss_sum, where)            # before a checkpoint: raises NonFiniteLoss if any rank saw one
"""

from __future__ import annotations

import signal

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
    checkpoint (sync). So a decision lands a few steps late, on every rank at the same step.

    The loss is watched through the rank's running sum of the epoch's losses, a tensor on the device:
    its finiteness goes into the all-reduced flags on the device too, so the loop never waits for the
    device to read a loss back (a NaN or an infinity anywhere makes the sum non-finite from then on)."""

    def __init__(self, preemption: Preemption, rank: int, device: torch.device | str = "cpu", every: int = 16):
        self.preemption, self.rank, self.device, self.every = preemption, rank, device, every
        self.pending, self.flags, self.steps = None, torch.zeros(2, device=device), 0
        self.where = ""  # the last step the flags were taken at
        self.stop = False  # a SIGTERM reached some rank: checkpoint at the next optimizer step, then exit

    def post(self, loss_sum: torch.Tensor, where: str) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self._start(loss_sum, where)

    def sync(self, loss_sum: torch.Tensor, where: str) -> None:
        """Agree on everything up to now (before a checkpoint, at the end of an epoch)."""
        self._start(loss_sum, where)
        self._settle()

    def _start(self, loss_sum: torch.Tensor, where: str) -> None:
        self._settle()
        preempted = torch.tensor(float(self.preemption.requested), device=self.device)
        self.flags = torch.stack([preempted, (~torch.isfinite(loss_sum)).to(preempted.dtype)])
        self.where = where
        self.pending = torch.distributed.all_reduce(self.flags, op=torch.distributed.ReduceOp.MAX, async_op=True)

    def _settle(self) -> None:
        if self.pending is None:
            return
        self.pending.wait()
        self.pending = None
        preempted, non_finite = self.flags.tolist()
        self.stop = self.stop or bool(preempted)
        if non_finite:
            raise NonFiniteLoss(f"train: the loss is not finite by {self.where} (on rank {self.rank} or another); "
                                f"lower train.optimizer.lr, set train.grad_clip, or check the data; the last good "
                                f"checkpoint and model are kept")
