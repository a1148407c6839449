"""The search end to end: Optuna trials as DVC experiments run by the Prefect flow, pruned from inside
DeepSpeed training, continued after a kill -9, the winner registered through the register stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tasks.hpo import space
from tasks.hpo.study import storage_url
from tasks.params import load_params
from tasks.training.pruning import open_storage
from tests.conftest import copy_repo, run, set_params

pytestmark = pytest.mark.slow

SMALL = {"train.epochs": 2, "train.num_procs": 1, "hpo.trials": 2, "hpo.parallel": 2,
         "hpo.space": {"train.optimizer.lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
                       "train.model": {"type": "categorical", "choices": ["mlp", "cnn"]},
                       "train.mlp.hidden": {"type": "categorical", "choices": [[64], [128, 64]],
                                            "when": {"train.model": "mlp"}}}}


def study_of(repo, name=None):
    p = load_params(repo / "params.yaml")
    h = p.hpo.model_copy(update={"study": name}) if name else p.hpo
    return optuna.load_study(study_name=h.study, storage=open_storage(storage_url(h, repo)))


def experiments(repo) -> dict[str, str]:
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
    return {r.rsplit("/", 1)[-1]: r for r in refs if "/exec/" not in r}


def at(repo, ref, path):
    return run(["git", "show", f"{ref}:{path}"], repo).stdout


@pytest.fixture(scope="module")
def searched(tmp_path_factory, prefect_server):
    """A repo whose pipeline ran once (the baseline), then a search of two trials at once, registered."""
    from flows.hpo import hpo

    repo = copy_repo(tmp_path_factory.mktemp("hpo"), master_port=29850)
    set_params(repo, SMALL)
    run(["git", "commit", "-qam", "a small search"], repo)
    run(["dvc", "repro"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the baseline run", "--allow-empty"], repo)  # register committed it already
    result = hpo(repo=str(repo), register_best=False)
    return repo, result


def test_two_concurrent_trials_are_two_experiments_with_the_trials_params(searched):
    repo, _ = searched
    study = study_of(repo)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 2
    exps = experiments(repo)
    ports = set()
    for t in trials:
        name = t.user_attrs["experiment"]
        assert name in exps, (name, exps)
        recorded = yaml.safe_load(at(repo, exps[name], "params.yaml"))
        for key, value in t.params.items():  # a list choice is offered to Optuna as its JSON
            value = json.loads(value) if isinstance(value, str) and value.startswith("[") else value
            assert space.lookup(recorded, key) == value, key
        ports.add(t.user_attrs["port"])
    assert len(ports) == 2  # each trial its own DeepSpeed rendezvous
    (a0, a1), (b0, b1) = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert b0 < a1  # they ran at the same time


def version_tags(repo) -> list[str]:
    return sorted(t for t in run(["git", "tag"], repo).stdout.split() if "@" in t)  # GTO: name@vX.Y.Z


def test_the_winner_is_registered_with_its_trial_and_reevaluates_to_its_metric(searched):
    from flows.hpo import register_winner

    repo, result = searched
    h = load_params(repo / "params.yaml").hpo
    register_winner(repo, h, study_of(repo), h.sampler)
    lineage = json.loads((repo / "registry" / "lineage.json").read_text())
    assert lineage["search"]["trial"] == result["best_trial"]
    assert lineage["search"]["study"] == "digits-search" and lineage["search"]["sampler"] == "tpe"
    shown = json.loads(run([sys.executable, "-m", "tasks.registry", "lineage", "digits@v0.0.2"], repo).stdout)
    assert shown["search"] == lineage["search"]  # the registry's own view names the trial too
    out = run([sys.executable, "-m", "tasks.registry", "show", "digits@v0.0.2"], repo).stdout
    assert f"trial {result['best_trial']}, experiment digits-search-t" in out
    recorded = json.loads((repo / "reports" / "metrics.json").read_text())["accuracy"]
    run(["dvc", "repro", "--force", "--single-item", "evaluate"], repo)
    assert json.loads((repo / "reports" / "metrics.json").read_text())["accuracy"] == recorded
    assert version_tags(repo) == ["digits@v0.0.1", "digits@v0.0.2"]  # the baseline's and the winner's
    for ref in experiments(repo).values():
        assert not run(["git", "tag", "--points-at", ref], repo).stdout.strip()


def test_a_users_experiment_runs_register_but_moves_no_version_or_stage(searched):
    """A plain `dvc exp run` runs the whole DAG; register inside it commits, tags and promotes nothing, and its
    lineage says so; applied and committed on the branch, the same model registers as usual."""
    repo, _ = searched
    before = run(["git", "tag"], repo).stdout.split()
    out = run(["dvc", "exp", "run", "--name", "by-hand", "-S", "train.epochs=1"], repo).stdout
    assert "experiment by-hand registers nothing" in out
    assert run(["git", "tag"], repo).stdout.split() == before
    lineage = json.loads(at(repo, experiments(repo)["by-hand"], "registry/lineage.json"))
    assert lineage["experiment"] == "by-hand" and lineage["version"] is None
    assert lineage["promotion"]["promote"] is False and "would_promote" in lineage["promotion"]
    run(["dvc", "exp", "apply", "by-hand"], repo)
    run(["git", "commit", "-qam", "apply by-hand"], repo)
    out = run(["dvc", "repro", "--force", "--single-item", "register"], repo).stdout
    assert version_tags(repo) == ["digits@v0.0.1", "digits@v0.0.2", "digits@v0.0.3"], out
    assert json.loads((repo / "registry" / "lineage.json").read_text())["version"] == "v0.0.3"


def test_a_bad_learning_rate_is_pruned_and_every_rank_stops_at_that_epoch(searched):
    from flows.hpo import hpo

    repo, _ = searched
    set_params(repo, {"train.epochs": 3, "hpo.study": "prune", "hpo.procs_per_trial": 2, "hpo.parallel": 1,
                      "hpo.trials": 3, "hpo.pruner.kind": "median",
                      "hpo.space": {"train.optimizer.lr": {"type": "float", "low": 1e-6, "high": 3.0, "log": True}}})
    run(["git", "commit", "-qam", "a search with a bad region"], repo)
    p = load_params(repo / "params.yaml")
    study = optuna.create_study(study_name="prune", storage=open_storage(storage_url(p.hpo, repo)))
    for lr in (0.003, 0.001, 2.5):  # the third diverges: worse than both at the first rung
        study.enqueue_trial({"train.optimizer.lr": lr})
    hpo(repo=str(repo), register_best=False)
    trials = study_of(repo, "prune").trials
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    pruned = trials[2]
    assert max(pruned.intermediate_values) < p.train.epochs  # fewer epochs than the others ran
    history = json.loads(at(repo, experiments(repo)[pruned.user_attrs["experiment"]], "reports/train_history.json"))
    assert len(history) == max(pruned.intermediate_values) < len(trials[0].intermediate_values)
    # both ranks wrote the pruned epoch's checkpoint (a rank that went on would have hung the other)
    from tasks.training import checkpoints as ckpt

    slot = repo / ".dvc" / "tmp" / "hpo" / "slots" / "0" / "checkpoints"
    (run_dir,) = [d for d in slot.iterdir() if d.name.endswith("-w2")]
    last = sorted(d for d in run_dir.iterdir() if d.is_dir())[-1]
    assert sorted(f.name for f in last.glob("rank*.safetensors")) == ["rank0.safetensors", "rank1.safetensors"]
    assert ckpt.rank_loop(last, 0)["loss_n"] == ckpt.rank_loop(last, 1)["loss_n"]  # the same batches, then stop


def test_a_killed_search_continues_the_same_study_with_no_trial_lost_or_run_twice(searched, tmp_path):
    repo, _ = searched
    set_params(repo, {"train.epochs": 2, "hpo.study": "resume", "hpo.procs_per_trial": 1, "hpo.parallel": 1,
                      "hpo.trials": 3, "hpo.space": SMALL["hpo.space"]})
    run(["git", "commit", "-qam", "a search to kill"], repo)
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    cmd = [sys.executable, "-m", "flows.hpo", "--no-register"]
    proc = subprocess.Popen(cmd, cwd=repo, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # kill while the second trial runs
        time.sleep(2)
        try:
            states = [t.state for t in study_of(repo, "resume").trials]
        except KeyError:
            continue
        if states.count(TrialState.COMPLETE) == 1 and TrialState.RUNNING in states:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    cut = [t.number for t in study_of(repo, "resume").trials if t.state == TrialState.RUNNING]
    assert cut, "the kill landed after the search had ended"
    out = run(cmd, repo, env=env, timeout=900).stdout
    trials = study_of(repo, "resume").trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 3
    assert all(t.state != TrialState.RUNNING for t in trials)
    names = [t.user_attrs["experiment"] for t in trials]
    assert len(set(names)) == len(names)  # no trial number (or experiment) twice
    exps = experiments(repo)
    assert all(t.user_attrs["experiment"] in exps for t in finished)
    cut_trial = trials[cut[0]]
    assert cut_trial.state == TrialState.FAIL or cut_trial.user_attrs["experiment"] in exps, out[-2000:]


def test_two_workers_share_one_study_on_postgresql(searched, postgres, tmp_path):
    repo, _ = searched
    set_params(repo, {"train.epochs": 1, "hpo.study": "shared", "hpo.storage": postgres, "hpo.parallel": 1,
                      "hpo.procs_per_trial": 1, "hpo.trials": 4, "hpo.pruner.kind": "none",
                      "hpo.space": SMALL["hpo.space"]})
    run(["git", "commit", "-qam", "a study on PostgreSQL"], repo)
    workers = [subprocess.Popen([sys.executable, "-m", "flows.hpo", "--no-register"], cwd=repo,
                                env=os.environ | {"PREFECT_HOME": str(tmp_path / f"prefect-{i}")},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [w.communicate(timeout=900)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n".join(o[-3000:] for o in outs)
    study = optuna.load_study(study_name="shared", storage=postgres)
    finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert 4 <= len(finished) <= 5  # each worker asks while the shared budget is open: at most one over
    assert len({t.user_attrs["owner"]["pid"] for t in finished}) == 2  # both workers ran trials
    assert len({json.dumps(t.params, sort_keys=True) for t in finished}) == len(finished)  # no point drawn twice
    exps = experiments(repo)
    assert all(t.user_attrs["experiment"] in exps for t in finished)
    assert "LockError" not in "".join(outs)


def test_a_failed_trial_is_listed_as_an_experiment_with_its_params_and_no_metrics(searched):
    from tasks.hpo.trial import Slot, TrialFailed

    repo, _ = searched
    baseline = run(["git", "rev-parse", "HEAD"], repo).stdout.strip()
    slot = Slot.take(repo)
    try:
        with pytest.raises(TrialFailed, match="listed by `dvc exp show` as bad-t000-failed"):
            slot.run(baseline, "bad-t000", ["train.optimizer.lr=-1"], {})
    finally:
        slot.release()
    ref = experiments(repo)["bad-t000-failed"]
    assert yaml.safe_load(at(repo, ref, "params.yaml"))["train"]["optimizer"]["lr"] == -1
    assert at(repo, ref, "dvc.lock") == at(repo, baseline, "dvc.lock")  # no stage ran with these params
    assert run(["git", "cat-file", "-e", f"{ref}:reports/metrics.json"], repo, check=False).returncode != 0
    assert "train.optimizer.lr" in run(["git", "log", "-1", "--format=%B", ref], repo).stdout
    assert "bad-t000-failed" in run(["dvc", "exp", "show", "--json"], repo).stdout
