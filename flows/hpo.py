"""The hyperparameter search as a Prefect flow: Optuna asks, each trial is a DVC experiment, the best is
registered through the normal register stage.

    python -m flows.hpo                         # the search params.yaml's `hpo:` describes, on the embedded server
    python -m flows.hpo . --trials 4 --parallel 2
    prefect deployment run hpo/hpo              # the `hpo` deployment (prefect.yaml)

The flow checks the space against params.yaml (a typo stops it before any
trial), opens the study (tasks/hpo/study.py) and settles trials a killed search
left behind, then keeps `parallel` trials running: each is a task run holding
its share of the machine's `training-hardware` (flows/hardware.py) and a free
DeepSpeed port, running `dvc exp run` up to evaluate in a checkout of its own
(tasks/hpo/trial.py). Training reports every epoch to the study from rank 0 and
stops where the pruner says (tasks/training/pruning.py). Trials start from the
committed HEAD, as DVC's queued experiments do. The UI shows a table of the
trials, a progress bar and, at the end, the best trial with the optimisation
history and the parameters' importances. With `register_best`, the best trial's
experiment is applied, committed on the current branch and registered by `dvc
repro register` (the promotion policy decides its stage), its lineage naming the
study, the trial and the sampler.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch
import yaml
from optuna.trial import TrialState
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from flows import hardware, search_report
from flows.pipeline import checkout_slot, slot
from tasks.errors import InputError
from tasks.hpo import space
from tasks.hpo import study as studies
from tasks.hpo.trial import Slot, TrialFailed, dvc, find_experiment, free_port, read_result
from tasks.params import Hpo, load_params
from tasks.registry.git import commit_paths, git
from tasks.training.launch import PORT_ENV
from tasks.training.pruning import TRIAL_ENV

SEARCH_ENV = "DAGTRAIN_SEARCH"  # register's lineage reads the winning trial's study, number and sampler here


def objective(history: list[dict], metric: str, direction: str) -> float:
    values = [e[metric] for e in history if metric in e]
    if not values:
        raise TrialFailed(f"training wrote no {metric!r} for any epoch")
    return min(values) if direction == "minimize" else max(values)


def trial_env(h: Hpo, pruner: dict, storage: str, trial_id: int, status: Path) -> dict:
    """The trial's environment: the study to report to, a rendezvous port of its own, its share of the cores."""
    spec = {"storage": storage, "study": h.study, "trial_id": trial_id, "metric": h.metric, "status": str(status),
            "pruner": pruner}
    env = {TRIAL_ENV: json.dumps(spec), PORT_ENV: str(free_port()), "DAGTRAIN_TRIAL_STATUS": str(status),
           "PYTHONUNBUFFERED": "1"}
    if not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // (h.parallel * h.procs_per_trial)))
    return env


def devices(slot_index: int, procs: int) -> dict:
    """On GPUs, the slot's own devices: slot k takes the k-th group of `procs`."""
    if not torch.cuda.is_available():
        return {}
    count = torch.cuda.device_count()
    first = (slot_index * procs) % max(count, 1)
    return {"CUDA_VISIBLE_DEVICES": ",".join(str((first + i) % count) for i in range(procs))}


@task(name="trial", task_run_name="{name}")
def run_trial(repo: str, baseline: str, name: str, overrides: list[str], env: dict, procs: int,
              hardware_slot: str) -> dict:
    """One trial: its experiment, in a free checkout, while it holds `procs` shares of the hardware."""
    logger = get_run_logger()
    with hardware.share(hardware_slot, procs):
        checkout = Slot.take(Path(repo))
        try:
            logger.info(f"{name}: checkout {checkout.path}, port {env[PORT_ENV]}")
            result = checkout.run(baseline, name, overrides, env | devices(checkout.index, procs), log=logger.info)
        finally:
            checkout.release()
    return {"experiment": result.experiment, "ref": result.ref, "history": result.history,
            "pruned_at_epoch": result.pruned_at_epoch, "metrics": result.metrics, "port": int(env[PORT_ENV])}


def told_from_experiment(repo: Path, h: Hpo, direction: str):
    """For a cut-off trial: (state, value) from its experiment if that finished, so it is not run again."""
    def look(t):
        name = t.user_attrs.get("experiment")
        ref = name and find_experiment(repo, name)
        if not ref:
            return None
        r = read_result(repo, name, ref)
        if r.pruned_at_epoch is not None:
            return TrialState.PRUNED, None
        return TrialState.COMPLETE, objective(r.history, h.metric, direction)
    return look


class Search:
    """The running trials, their slots and the study's bookkeeping (the flow's thread does all telling)."""

    def __init__(self, repo: Path, h: Hpo, pruner: dict, study, baseline: str, hardware_slot: str):
        self.repo, self.h, self.study, self.baseline, self.hardware_slot = repo, h, study, baseline, hardware_slot
        self.pruner = pruner
        self.direction = studies.direction(h)
        self.storage = studies.storage_url(h, repo)
        self.running: dict = {}  # future -> trial
        self.stop_beat = threading.Event()
        self.rows: dict[int, dict] = {}
        self.failed_in_a_row = 0
        self.progress = create_progress_artifact(0.0, key="hpo-progress", description=f"study {h.study}")

    def start(self) -> None:
        self.study.sampler = studies.sampler_for_next(self.study, self.h, len(self.running))
        trial = self.study.ask()
        number = trial.number
        name = f"{self.h.study}-t{number:03d}"
        for k, v in {"owner": studies.owner(), "heartbeat": time.time(), "experiment": name}.items():
            trial.set_user_attr(k, v)
        values = space.suggest(trial, self.h.space)
        status = self.repo / ".dvc" / "tmp" / "hpo" / f"{name}.status.json"
        status.unlink(missing_ok=True)
        env = trial_env(self.h, self.pruner, self.storage, trial._trial_id, status)
        overrides = space.overrides(values) + [f"train.num_procs={self.h.procs_per_trial}"]
        trial.set_user_attr("port", int(env[PORT_ENV]))
        print(f"hpo: trial {number} ({name}): " + ", ".join(space.overrides(values)))
        future = run_trial.submit(str(self.repo), self.baseline, name, overrides, env, self.h.procs_per_trial,
                                  self.hardware_slot)
        self.running[future] = trial
        self.rows[number] = {"trial": number, "experiment": name, "state": "running", "epochs": None,
                             self.h.metric: None, **{k: json.dumps(v) for k, v in values.items()}}

    def finish(self, future) -> None:
        trial = self.running.pop(future)
        row = self.rows[trial.number]
        try:
            r = future.result()
            value = objective(r["history"], self.h.metric, self.direction)
        except Exception as e:  # the trial's run failed (or wrote no metric): recorded, its budget spent again
            trial.set_user_attr("error", str(e)[-2000:])
            self.study.tell(trial, state=TrialState.FAIL)
            row.update(state="failed")
            print(f"hpo: trial {trial.number} failed: {(str(e) or repr(e)).splitlines()[0]}")
            self.failed_in_a_row += 1
            if self.failed_in_a_row >= max(3, self.h.parallel):  # a space or setup that fails every trial
                raise InputError(f"hpo: the last {self.failed_in_a_row} trials of study {self.h.study} all failed; "
                                 f"stopping rather than failing more. Last error:\n{str(e)[-1500:]}") from None
            return
        self.failed_in_a_row = 0
        row.update(epochs=len(r["history"]), **{self.h.metric: round(value, 5)})
        if r["pruned_at_epoch"] is not None:
            self.study.tell(trial, state=TrialState.PRUNED)
            row.update(state=f"pruned after epoch {r['pruned_at_epoch']}")
        else:
            self.study.tell(trial, value)
            row.update(state="complete")
        print(f"hpo: trial {trial.number}: {row['state']}, {self.h.metric} {value:.4f} in {row['epochs']} epoch(s)")

    def beat(self) -> None:
        while not self.stop_beat.wait(studies.HEARTBEAT_S):
            for trial in list(self.running.values()):
                try:  # a trial told meanwhile, or a storage hiccup: the next beat tries again
                    studies.beat(self.study, trial._trial_id)
                except Exception as e:  # the thread must outlive any one beat
                    print(f"hpo: heartbeat of trial {trial.number} not written: {type(e).__name__}: {e}")

    def publish(self) -> None:
        done = studies.finished_count(self.study)
        create_table_artifact(key="hpo-trials", table=[self.rows[k] for k in sorted(self.rows)],
                              description=f"study {self.h.study}: {done} of {self.h.trials} trials finished")
        update_progress_artifact(self.progress, min(100.0, 100.0 * done / self.h.trials),
                                 description=f"{done}/{self.h.trials} trials finished")


def run_search(repo: Path, h: Hpo, pruner: dict, study, baseline: str, hardware_slot: str) -> Search:
    s = Search(repo, h, pruner, study, baseline, hardware_slot)
    beating = threading.Thread(target=s.beat, daemon=True)
    beating.start()
    deadline = time.monotonic() + h.timeout_s if h.timeout_s else None
    try:
        while True:  # the budget counts every worker's running trials (several searches may share a study)
            open_budget = h.trials - studies.finished_count(study) - studies.running_count(study)
            in_time = deadline is None or time.monotonic() < deadline
            while len(s.running) < h.parallel and open_budget > 0 and in_time:
                s.start()
                open_budget -= 1
            if not s.running:
                break
            s.finish(next(as_completed(list(s.running))))
            s.publish()
    finally:
        s.stop_beat.set()
    return s


def baseline_commit(repo: Path, register_best: bool) -> str:
    """HEAD, which the trials run; with `register_best`, only from a clean tree (the winner is applied onto
    it and committed, so a change of the user's would be mixed into the version's commit or lost)."""
    sha = git("rev-parse", "HEAD", cwd=repo)
    dirty = [ln[3:] for ln in git("status", "--porcelain", "--untracked-files=no", cwd=repo).splitlines()]
    if dirty and register_best:
        raise InputError("hpo: uncommitted changes to " + ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else "")
                         + ": the best trial is applied onto this checkout and committed; commit or stash them "
                         "first, or search without registering (--no-register, register_best=False)")
    if dirty:
        print(f"hpo: trials run the committed HEAD {sha[:8]}; not in them: uncommitted changes to "
              + ", ".join(dirty[:5]) + (" ..." if len(dirty) > 5 else ""))
    return sha


def register_winner(repo: Path, h: Hpo, study, sampler: str) -> dict:
    """Apply the best trial's experiment, commit it, and register it through `dvc repro register`."""
    best = study.best_trial
    name = best.user_attrs["experiment"]
    with slot(checkout_slot(repo)):  # DVC cannot run twice in one checkout
        code, lines = dvc("exp", "apply", name, cwd=repo, log=print)
        if code != 0:
            raise InputError(f"hpo: `dvc exp apply {name}` failed:\n" + "\n".join(lines[-5:]))
        changed = git("diff", "--name-only", cwd=repo).split()
        commit_paths(repo, f"hpo: apply {name}, the best trial of study {h.study} ({sampler})", changed)
        search = {"study": h.study, "trial": best.number, "experiment": name, "sampler": sampler,
                  "storage": studies.storage_url(h, repo), "value": best.value, "metric": h.metric}
        code, lines = dvc("repro", "--single-item", "register", cwd=repo, env={SEARCH_ENV: json.dumps(search)},
                          log=print)
        if code != 0:
            raise InputError(f"hpo: registering {name} failed:\n" + "\n".join(lines[-8:]))
    return search


@flow(name="hpo", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=16))
def hpo(repo: str = ".", trials: int | None = None, parallel: int | None = None, register_best: bool = True,
        hardware_slot: str = "training-hardware") -> dict:
    """Search params.yaml's `hpo:` space; every trial a DVC experiment; the best registered if asked."""
    path = Path(repo).resolve()
    p = load_params(path / "params.yaml")
    space.check(p.hpo.space, yaml.safe_load((path / "params.yaml").read_text()))
    asked = {k: v for k, v in {"trials": trials, "parallel": parallel}.items() if v is not None}
    try:
        h = Hpo.model_validate(p.hpo.model_dump() | asked)  # --trials 0 or --parallel -1: refused, named
    except ValidationError as e:
        raise InputError("hpo: " + "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']} (got {err['input']!r})"
                                              for err in e.errors())) from None
    baseline = baseline_commit(path, register_best)
    study = studies.open_study(h, p.train, path)
    for line in studies.reconcile(study, told_from_experiment(path, h, studies.direction(h))):
        print(f"hpo: {line}")
    get_run_logger().info(f"hpo: study {h.study} in {studies.storage_url(h, path)}: "
                          f"{studies.finished_count(study)} of {h.trials} trials finished before this run")
    s = run_search(path, h, studies.pruner_spec(h, p.train), study, baseline, hardware_slot)
    s.publish()
    if not studies.finished_count(study) or not study.get_trials(states=(TrialState.COMPLETE,)):
        raise InputError(f"hpo: study {h.study} has no complete trial; see the failed trials' errors above")
    search_report.publish_best(path, h, study)
    result = {"study": h.study, "best_trial": study.best_trial.number, "best_value": study.best_value,
              "best_params": study.best_trial.params}
    if register_best:
        result["registered"] = register_winner(path, h, study, h.sampler)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m flows.hpo", description="the hyperparameter search")
    ap.add_argument("repo", nargs="?", default=".")
    ap.add_argument("--trials", type=int, help="trials to reach (default hpo.trials)")
    ap.add_argument("--parallel", type=int, help="trials at once (default hpo.parallel)")
    ap.add_argument("--no-register", action="store_true", help="search only; apply the best yourself")
    a = ap.parse_args()
    from tasks.errors import run_main

    with hardware.patient_embedded_server():
        run_main(lambda: hpo(repo=a.repo, trials=a.trials, parallel=a.parallel, register_best=not a.no_register))


if __name__ == "__main__":
    main()
