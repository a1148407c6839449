"""The loop's state: one typed object, saved in every checkpoint and restored on resume.

    state = LoopState()                                   # a fresh run: epoch 1, batch 0
    engine.save_checkpoint(dir, tag, client_state=state.shared())   # what rank 0's checkpoint holds
    save_rank_state(dir / tag, rank, state.own())         # what each rank holds for itself
    state = LoopState.restored(client_state, own)         # after engine.load_checkpoint

`shared()` is the same on every rank (where the loop is, the history, early
stopping, a reshard's handovers); `own()` is this rank's partial loss sums (and the continual term's),
which DeepSpeed's client_state cannot hold since rank 0 alone writes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

from tasks.params import EarlyStopping

OWN = ("loss_sum", "loss_n", "term_sum")  # this rank's, saved beside its random generators


@dataclass
class LoopState:
    epoch: int = 1  # the epoch to run next (or the one under way)
    batch: int = 0  # batches of it already done
    history: list[dict] = field(default_factory=list)  # one entry per finished epoch
    best: float | None = None  # the early-stopping metric's best value so far
    best_tag: str | None = None  # the checkpoint that holds it
    bad_epochs: int = 0  # epochs since it last improved
    resharded: dict | None = None  # an epoch other process counts ran part of (reshard.py)
    loss_sum: float = 0.0  # this rank's sum of batch losses in the epoch so far
    loss_n: int = 0  # and how many batches that is
    term_sum: float = 0.0  # this rank's sum of the continual strategy's term (tasks/continual/strategies.py)

    def shared(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in OWN}

    def own(self) -> dict:
        return {k: getattr(self, k) for k in OWN}

    @classmethod
    def restored(cls, shared: dict, own: dict) -> LoopState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in shared.items() if k in names and k not in OWN},
                   **{k: own.get(k, getattr(cls, k)) for k in OWN})

    def stopped_early(self, es: EarlyStopping) -> bool:
        return self.bad_epochs >= es.patience > 0

    def end_epoch(self, entry: dict, better: bool, metric: str, tag: str) -> LoopState:
        """The state after epoch `entry["epoch"]` (its history entry; whether it improved on the best, and the
        checkpoint tag it is saved under): the next epoch, its loss sums at zero."""
        best = {"best": entry[metric], "best_tag": tag} if better else {}
        return replace(self, epoch=entry["epoch"] + 1, batch=0, history=[*self.history, entry],
                       bad_epochs=0 if better else self.bad_epochs + 1, loss_sum=0.0, loss_n=0, term_sum=0.0,
                       **best)
