"""The `continual:` section: learning from each new data version without forgetting the earlier ones.

    from tasks.params import Continual
    Continual(strategy="replay")      # every other key at params.yaml's value

A continual run fine-tunes a parent (train.init.from, usually the version in
the production stage) on the rows its data version adds. Which rows it trains
on, and what keeps the old ones in mind, is the strategy; the replay buffer is
built on every run (a DVC output every registered version carries), so a
later run can switch strategy. The forgetting gate is the promotion policy's
(register.max_forgetting).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.params.base import Section

STRATEGIES = ("joint", "naive", "replay", "ewc", "lwf")
NEW_ROWS_ONLY = ("naive", "replay", "ewc", "lwf")  # train on the rows the parent has not seen


class Buffer(Section):
    """The replay buffer: rows of every data version so far, kept as data (tasks/continual/buffer.py)."""

    size: int = Field(200, ge=1, description="rows kept across data versions: a class-balanced (or "
                      "version-balanced) reservoir of the training rows, built from the parent's buffer and "
                      "this version's new training rows")
    balance: Literal["class", "experience"] = Field("class", description="class: an equal share of the size "
                                                    "per class seen; experience: an equal share per data "
                                                    "version (a regression has one class)")
    seed: int = Field(0, description="which rows the reservoir keeps: another seed, another buffer")
    rows_per_batch: int = Field(16, ge=1, description="replay: buffer rows added to every batch of "
                                "train.batch_size new rows, drawn by (train.seed, epoch, batch)")


class Ewc(Section):
    """Elastic weight consolidation (Kirkpatrick et al. 2017): a penalty on moving the weights the
    parent's earlier data relied on, by the diagonal of their Fisher information."""

    weight: float = Field(1000.0, gt=0, description="lambda: the penalty is lambda/2 * sum F (w - w_parent)^2")


class Lwf(Section):
    """Learning without forgetting (Li and Hoiem 2016): the parent's outputs on the new rows, over the
    classes it has seen, are distilled into the model."""

    weight: float = Field(1.0, gt=0, description="alpha: the distillation term's weight against the task loss")
    temperature: float = Field(2.0, gt=0, description="the softmax temperature of both distributions")


class Continual(Section):
    """How each new data version is learned from the parent (tasks/continual/)."""

    strategy: Literal["joint", "naive", "replay", "ewc", "lwf"] = Field(
        "joint", description="joint: every training row of the data version (the reference; from scratch "
        "without a parent); naive: only the rows the parent has not seen; replay: those plus "
        "buffer.rows_per_batch buffer rows in every batch; ewc: new rows, and the EWC penalty; lwf: new rows, "
        "and distillation from the parent")
    buffer: Buffer = Buffer()
    ewc: Ewc = Ewc()
    lwf: Lwf = Lwf()
