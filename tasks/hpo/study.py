"""The study: Optuna's storage, sampler and pruner from the `hpo:` section, and trials a dead search left.

    study = open_study(p.hpo, p.train, repo)    # created, or continued (load_if_exists)
    reconcile(study, finished_elsewhere)        # RUNNING trials whose search died: failed, or told
    beat(trial_id, study)                       # the live search's heartbeat, a user attribute

Optuna's journal storage (the default: a file, no server) keeps no heartbeat,
and the RDB one keeps it only inside `optimize()`, not for ask-and-tell; so the
search writes its own into each running trial (owner host and pid, and the time),
the same on both storages. A RUNNING trial whose owner on this host is gone, or
whose heartbeat is older than STALE_S, was cut off: if its experiment finished
it is told from it (so no trial runs twice), else it is failed, and the search
spends its budget again (`trials` counts complete and pruned ones only).
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from pathlib import Path

import optuna
import psutil
from optuna.trial import TrialState

from tasks.errors import InputError
from tasks.metrics import higher_is_better
from tasks.params import Hpo, Train
from tasks.training.pruning import make_pruner, open_storage

HEARTBEAT_S = 10.0
STALE_S = 90.0
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def storage_url(hpo: Hpo, repo: Path) -> str:
    """Where the study lives: hpo.storage, else a journal file of this checkout (.dvc/tmp is DVC's own,
    ignored by git and by DVC)."""
    return hpo.storage or str(repo / ".dvc" / "tmp" / "hpo" / f"{hpo.study}.journal")


def direction(hpo: Hpo) -> str:
    if hpo.direction:
        return hpo.direction
    return "maximize" if higher_is_better(hpo.metric) else "minimize"


def sampler(hpo: Hpo, salt: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler, seeded with hpo.seed + salt: the search reseeds it before each ask (sampler_for_next),
    so a continued study draws new points, not its first ones again."""
    s = optuna.samplers
    if hpo.sampler != "qmc":  # QMC's position in its sequence is in the storage; its seed only scrambles
        hpo = hpo.model_copy(update={"seed": hpo.seed + salt})
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # TPE's `group`
    if hpo.sampler == "tpe":  # multivariate and grouped: the space is conditional (`when`); the liar for parallel
        return s.TPESampler(seed=hpo.seed, multivariate=True, group=True, constant_liar=hpo.parallel > 1)
    if hpo.sampler == "cmaes":  # continuous dimensions; categorical ones go to its independent sampler
        return s.CmaEsSampler(seed=hpo.seed, warn_independent_sampling=False)
    return {"random": s.RandomSampler, "qmc": s.QMCSampler, "gp": s.GPSampler,
            "nsgaii": s.NSGAIISampler}[hpo.sampler](seed=hpo.seed)


def pruner_spec(hpo: Hpo, train: Train) -> dict:
    """The pruner as rank 0 rebuilds it (tasks/training/pruning.py make_pruner)."""
    return hpo.pruner.model_dump() | {"max_epochs": train.epochs, "startup_trials": max(2, hpo.parallel)}


def open_study(hpo: Hpo, train: Train, repo: Path) -> optuna.Study:
    url = storage_url(hpo, repo)
    try:
        storage = open_storage(url)
    except Exception as e:  # a bad URL, a server that is down, a driver missing
        raise InputError(f"params.yaml hpo.storage: cannot open {url!r}: {type(e).__name__}: {e}") from None
    study = optuna.create_study(study_name=hpo.study, storage=storage, sampler=sampler(hpo),
                                pruner=make_pruner(pruner_spec(hpo, train)), direction=direction(hpo),
                                load_if_exists=True)
    if study.direction.name.lower() != direction(hpo):
        raise InputError(f"params.yaml hpo: study {hpo.study!r} in {url} was made to {study.direction.name.lower()}"
                         f" its metric, not to {direction(hpo)}: name another hpo.study")
    return study


def sampler_for_next(study: optuna.Study, hpo: Hpo, own_running: int) -> optuna.samplers.BaseSampler:
    """The sampler for the next ask: seeded by the study's length, so one search is reproducible and a
    restarted one goes on where it stopped; with other workers on the study (a shared storage, or running
    trials not this search's) also by this process, so two workers never draw the same points."""
    salt = len(study.trials)
    if hpo.storage or running_count(study) > own_running:
        salt += 1_000_003 * (os.getpid() % 1000 + 1)
    return sampler(hpo, salt)


def owner() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid()}


def beat(study: optuna.Study, trial_id: int) -> None:
    study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())


def _cut_off(trial: optuna.trial.FrozenTrial, now: float) -> bool:
    who = trial.user_attrs.get("owner", {})
    if who.get("host") == socket.gethostname() and not psutil.pid_exists(who.get("pid", -1)):
        return True  # its search died on this machine
    if who.get("host") == socket.gethostname() and who.get("pid") == os.getpid():
        return False  # this search's own
    return now - trial.user_attrs.get("heartbeat", 0.0) > STALE_S


def reconcile(study: optuna.Study, finished_elsewhere) -> list[str]:
    """Settle the RUNNING trials a dead search left: told from their experiment if it finished
    (`finished_elsewhere(trial)` returns (state, value) or None), else failed. Lines for the log."""
    lines, now = [], time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _cut_off(t, now):
            continue
        done = finished_elsewhere(t)
        if done is not None:
            state, value = done
            study.tell(t.number, value if state == TrialState.COMPLETE else None, state=state)
            lines.append(f"trial {t.number}: its experiment had finished ({state.name.lower()}); recorded")
        else:
            study._storage.set_trial_user_attr(t._trial_id, "error", "cut off: its search stopped")
            study.tell(t.number, state=TrialState.FAIL)
            lines.append(f"trial {t.number}: cut off by a stopped search; failed, its budget spent again")
    return lines


def finished_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def running_count(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
