"""A search trial's side inside training: rank 0 reports each epoch to the Optuna study, every rank obeys its
prune decision at the same epoch.

    trial = TrialReport.from_env(rank, params)     # None outside a search (no DAGTRAIN_TRIAL)
    if trial and trial.prune(epoch, entry, device): ...  # stop at this epoch boundary, keep the best epoch

The search (tasks/hpo/trial.py) starts each trial's `dvc exp run` with
DAGTRAIN_TRIAL set to the study's storage, name and trial id. Only rank 0 opens
the study (one process asks, GOTCHAS): it reports the epoch's validation figure
and asks the pruner; the answer is broadcast, so every rank leaves the loop after
the same epoch and none waits in a collective the others never join.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

TRIAL_ENV = "DAGTRAIN_TRIAL"


def open_storage(where: str):
    """An Optuna storage from a URL (a database through SQLAlchemy) or a journal file's path."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if "://" in where:
        return optuna.storages.RDBStorage(where)
    Path(where).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(where))


def make_pruner(spec: dict):
    """Optuna's pruner from the `hpo.pruner` section (a dict, so the ranks need no params of the search):
    a study keeps its pruner in the process that loads it, not in its storage, so the search and rank 0
    must build the same one."""
    import optuna

    p, kind = optuna.pruners, spec["kind"]
    if kind == "none":
        return p.NopPruner()
    if kind == "median":
        return p.MedianPruner(n_startup_trials=spec["startup_trials"], n_warmup_steps=spec["min_epochs"])
    if kind == "asha":
        return p.SuccessiveHalvingPruner(min_resource=spec["min_epochs"], reduction_factor=spec["reduction_factor"])
    return p.HyperbandPruner(min_resource=spec["min_epochs"], max_resource=spec["max_epochs"],
                             reduction_factor=spec["reduction_factor"])


class TrialReport:
    """Rank 0 holds the Optuna trial; the others hold nothing but take part in the broadcast."""

    def __init__(self, spec: dict, rank: int, metric: str):
        self.spec, self.rank, self.metric, self.trial = spec, rank, metric, None
        if rank == 0:
            import optuna

            study = optuna.load_study(study_name=spec["study"], storage=open_storage(spec["storage"]),
                                      pruner=make_pruner(spec["pruner"]))
            self.trial = optuna.trial.Trial(study, spec["trial_id"])

    @classmethod
    def from_env(cls, rank: int) -> TrialReport | None:
        raw = os.environ.get(TRIAL_ENV)
        if not raw:
            return None
        spec = json.loads(raw)
        return cls(spec, rank, spec["metric"])

    def prune(self, epoch: int, entry: dict, device) -> bool:
        """Report the epoch (rank 0) and agree on the pruner's answer (every rank)."""
        import torch.distributed as dist

        flag = torch.zeros(1, device=device)
        if self.trial is not None:
            self.trial.report(float(entry[self.metric]), step=epoch)
            flag += float(self.trial.should_prune())
        dist.broadcast(flag, src=0)
        pruned = bool(flag.item())
        if pruned and self.rank == 0 and self.spec.get("status"):
            Path(self.spec["status"]).write_text(json.dumps({"pruned_at_epoch": epoch}))
        return pruned
