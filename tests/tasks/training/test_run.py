"""training.run and training.state: what a checkpoint must match to resume, and the loop's typed state."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.errors import InputError
from tasks.params import EarlyStopping, Train
from tasks.training import run as runs
from tasks.training.state import LoopState


@pytest.fixture
def splits(tmp_path):
    for s in ("train", "val"):
        pq.write_table(pa.table({"x0": [1.0, 2.0], "label": [0, 1]}), tmp_path / f"{s}.parquet")
    return tmp_path


def test_the_fingerprint_covers_the_deepspeed_json_contents_not_its_path(splits, tmp_path):
    cfg = tmp_path / "zero.json"
    cfg.write_text('{"zero_optimization": {"stage": 2}}')
    params = Train(deepspeed_config=cfg)
    before = runs.fingerprint(params, splits)
    assert runs.fingerprint(params, splits) == before  # stable
    cfg.write_text('{"zero_optimization": {"stage": 1}}')  # edited in place: a new run, never a resume
    assert runs.fingerprint(params, splits) != before
    cfg.unlink()
    with pytest.raises(InputError, match="zero.json: train.deepspeed_config not found"):
        runs.fingerprint(params, splits)


def test_the_fingerprint_follows_the_data_and_the_params_that_shape_training_only(splits):
    base = runs.fingerprint(Train(), splits)
    assert runs.fingerprint(Train(num_procs=4, master_port=29600), splits) == base  # where, not what
    assert runs.fingerprint(Train(seed=1), splits) != base
    pq.write_table(pa.table({"x0": [1.0, 3.0], "label": [0, 1]}), splits / "train.parquet")
    assert runs.fingerprint(Train(), splits) != base


def test_the_fingerprint_covers_the_code_that_shapes_the_weights(splits, tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.py").write_text("WIDTH = 8\n")
    (tmp_path / "tasks" / "training").mkdir(parents=True)
    (tmp_path / "tasks" / "continual").mkdir(parents=True)
    for name in ("train.py", "training/data.py", "training/loss.py", "training/engine.py", "training/state.py",
                 "training/init.py", "continual/strategies.py"):
        (tmp_path / "tasks" / name).write_text("")
    monkeypatch.setattr(runs, "ROOT", tmp_path)
    before = runs.fingerprint(Train(), splits)
    (tmp_path / "models" / "net.py").write_text("WIDTH = 16\n")
    after_model = runs.fingerprint(Train(), splits)
    assert after_model != before
    (tmp_path / "tasks" / "training" / "engine.py").write_text("# how the DeepSpeed config is derived\n")
    assert runs.fingerprint(Train(), splits) != after_model
    after_engine = runs.fingerprint(Train(), splits)
    (tmp_path / "tasks" / "continual" / "strategies.py").write_text("# what replay, EWC and LwF add\n")
    assert runs.fingerprint(Train(), splits) != after_engine
    # a warm start's parent by its weights: digits@prod moved to other weights is another run
    warm = Train.model_validate({"init": {"from": "digits@prod"}})
    assert runs.fingerprint(warm, splits, "a" * 64) != runs.fingerprint(warm, splits, "b" * 64)


def test_n_outputs_counts_every_class_clean_saw_not_those_a_split_holds():
    assert runs.n_outputs({"task": "classification", "classes": [3, 5, 9]}) == 3
    assert runs.n_outputs({"task": "regression"}) == 1


def test_the_loop_state_splits_into_what_rank_0_saves_and_what_each_rank_saves():
    state = LoopState(epoch=3, batch=5, best=0.2, best_tag="step00000040", loss_sum=1.5, loss_n=5, term_sum=0.25)
    shared, own = state.shared(), state.own()
    assert own == {"loss_sum": 1.5, "loss_n": 5, "term_sum": 0.25} and not set(own) & set(shared)
    assert shared["epoch"] == 3 and shared["best_tag"] == "step00000040"
    assert LoopState.restored(shared | {"a key of a later version": 1}, own) == state
    older = {"loss_sum": 1.5, "loss_n": 5}  # a rank's counters from before the continual term
    assert LoopState.restored(shared, older).term_sum == 0.0


def test_an_epoch_end_moves_on_and_counts_epochs_without_improvement():
    es = EarlyStopping(metric="val_loss", patience=2)
    state = LoopState(loss_sum=3.0, loss_n=3)
    state = state.end_epoch({"epoch": 1, "val_loss": 0.5}, True, "val_loss", "step00000010")
    assert (state.epoch, state.batch, state.best, state.best_tag, state.loss_n) == (2, 0, 0.5, "step00000010", 0)
    state = state.end_epoch({"epoch": 2, "val_loss": 0.6}, False, "val_loss", "step00000020")
    assert state.best_tag == "step00000010" and state.bad_epochs == 1 and not state.stopped_early(es)
    state = state.end_epoch({"epoch": 3, "val_loss": 0.7}, False, "val_loss", "step00000030")
    assert state.stopped_early(es) and [e["epoch"] for e in state.history] == [1, 2, 3]
