"""tasks.hpo: the space is checked against params.yaml before any trial, sampled through Optuna, and set by
DVC's own `-S` parser to exactly the trial's values; the study's bookkeeping of cut-off trials."""

from __future__ import annotations

import copy
import os

import optuna
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from optuna.trial import TrialState
from ruamel.yaml import YAML

from tasks.errors import InputError
from tasks.hpo import space, study
from tasks.params import Dimension, load_params
from tests.conftest import ROOT

RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_shipped_space_is_valid_and_samples_conditionally():
    p = load_params(ROOT / "params.yaml")
    space.check(p.hpo.space, RAW)
    s = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = set()
    for _ in range(12):
        values = space.suggest(s.ask(), p.hpo.space)
        model = values["train.model"]
        seen.add(model)
        assert ("train.cnn.channels" in values) == (model == "cnn")  # `when`: only for its model
        assert ("train.mlp.hidden" in values) == (model == "mlp")
    assert seen == {"cnn", "mlp"}


@pytest.mark.parametrize("key, dim, named", [
    ("train.optimizer.lrr", {"type": "float", "low": 0.1, "high": 1.0}, "train.optimizer.lrr: params.yaml has no"),
    ("train.epochs", {"type": "int", "low": -3, "high": 4}, "train.epochs: the value -3 is refused"),
    ("train.model", {"type": "categorical", "choices": ["cnn", "resnet"]}, "the value 'resnet' is refused"),
    ("train.cnn.channels", {"type": "categorical", "choices": [[16]], "when": {"train.model": "rnn"}},
     "train.model='rnn' is not a choice"),
])
def test_a_bad_key_or_range_is_refused_before_any_trial_naming_it(key, dim, named):
    hpo_space = {key: Dimension(**dim)}
    with pytest.raises(InputError, match="no trial started") as err:
        space.check(hpo_space, RAW)
    assert named in str(err.value) and f"hpo.space.{key}" in str(err.value)


def test_a_dimension_that_cannot_be_a_range_is_refused_by_the_params():
    for bad in ({"type": "float", "low": 1.0, "high": 0.5}, {"type": "float", "low": 0.0, "high": 1.0, "log": True},
                {"type": "categorical"}, {"type": "int", "low": 1.5, "high": 4}):
        with pytest.raises(ValueError):
            Dimension(**bad)


def test_the_flow_refuses_a_typo_before_any_trial(tmp_path, monkeypatch):
    from flows.hpo import hpo

    raw = copy.deepcopy(RAW)
    raw["hpo"]["space"]["train.optimiser.lr"] = {"type": "float", "low": 0.001, "high": 0.1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(InputError, match=r"hpo\.space\.train\.optimiser\.lr: params.yaml has no such key"):
        hpo.fn(repo=str(tmp_path))  # the flow's body: it stops at the check, before the study or any trial
    assert not (tmp_path / ".dvc").exists()


values = st.fixed_dictionaries({
    "train.optimizer.lr": st.floats(1e-9, 10.0, allow_nan=False),
    "train.optimizer.weight_decay": st.floats(0.0, 1.0, allow_nan=False),
    "train.batch_size": st.integers(1, 4096),
    "train.model": st.sampled_from(["mlp", "cnn", "rnn", "transformer"]),
    "train.cnn.channels": st.lists(st.integers(1, 512), min_size=1, max_size=4),
    "train.mlp": st.fixed_dictionaries({"hidden": st.lists(st.integers(1, 2048), min_size=1, max_size=3),
                                        "dropout": st.floats(0.0, 0.9, allow_nan=False)}),
})


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values)
def test_dvc_sets_exactly_the_trials_values(tmp_path, picked):
    """What `dvc exp run -S` writes (DVC's own Hydra-based parser) is the trial's values, for any value."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(RAW, sort_keys=False))
    apply_overrides(path, space.overrides(picked))
    written = YAML(typ="safe").load(path.read_text())  # YAML 1.2, as DVC reads it: 1e-09 is a float there
    assert written == space.applied(RAW, picked)
    assert load_params(path).train.optimizer.lr == picked["train.optimizer.lr"]  # and so for the stages


def test_a_trial_cut_off_by_a_dead_search_is_failed_or_told_from_its_experiment(monkeypatch):
    s = optuna.create_study()
    finished, lost, live = s.ask(), s.ask(), s.ask()
    dead = {"host": study.socket.gethostname(), "pid": 2 ** 22 + 7}  # no such process
    for t in (finished, lost):
        t.set_user_attr("owner", dead)
    live.set_user_attr("owner", study.owner())
    told = {finished.number: (TrialState.COMPLETE, 0.25)}
    lines = study.reconcile(s, lambda t: told.get(t.number))
    states = {t.number: t.state for t in s.trials}
    assert states == {finished.number: TrialState.COMPLETE, lost.number: TrialState.FAIL,
                      live.number: TrialState.RUNNING}  # this search's own trial is left alone
    assert s.trials[finished.number].value == 0.25 and len(lines) == 2
    assert os.getpid() == study.owner()["pid"]


def test_a_stale_heartbeat_from_another_machine_is_cut_off(monkeypatch):
    s = optuna.create_study()
    t = s.ask()
    t.set_user_attr("owner", {"host": "elsewhere", "pid": 1})
    t.set_user_attr("heartbeat", 0.0)
    fresh = s.ask()
    fresh.set_user_attr("owner", {"host": "elsewhere", "pid": 1})
    study.beat(s, fresh._trial_id)
    study.reconcile(s, lambda _: None)
    assert [x.state for x in s.trials] == [TrialState.FAIL, TrialState.RUNNING]


def draws(h, n: int, st: optuna.Study | None = None) -> tuple[optuna.Study, list[dict]]:
    st = st or optuna.create_study()
    out = []
    for _ in range(n):
        st.sampler = study.sampler_for_next(st, h, own_running=0)
        t = st.ask()
        out.append(space.suggest(t, h.space))
        st.tell(t, 1.0)
    return st, out


@pytest.mark.parametrize("kind", ["tpe", "random"])
def test_a_fresh_search_reproduces_and_a_continued_one_draws_new_points(kind):
    h = load_params(ROOT / "params.yaml").hpo.model_copy(update={"sampler": kind, "seed": 7})
    _, first = draws(h, 3)
    assert draws(h, 3)[1] == first  # one seed, one study: the same points
    st, _ = draws(h, 2)
    _, more = draws(h, 2, st)  # a search started again on that study
    assert not any(p in first[:2] for p in more)  # goes on, rather than replaying its first points


def test_two_workers_on_a_shared_storage_draw_different_points(monkeypatch):
    h = load_params(ROOT / "params.yaml").hpo.model_copy(update={"sampler": "random", "storage": "sqlite://"})
    st = optuna.create_study()
    a = study.sampler_for_next(st, h, 0)
    pid = os.getpid()
    monkeypatch.setattr(study.os, "getpid", lambda: pid + 1)  # another worker, same study length
    b = study.sampler_for_next(st, h, 0)
    dim = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    ta, tb = st.ask(), st.ask()
    assert a.sample_independent(st, ta, "lr", dim) != b.sample_independent(st, tb, "lr", dim)
