"""train with continual strategies, for real (DeepSpeed, 2 CPU ranks over gloo): replay resumes exactly after
kill -9, EWC trains against its parent, each shows its term in the history; ewc under ZeRO 3 is refused first.

Slow: `pytest -m slow tests/e2e/test_continual_training.py` (about 2-3 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from models import build
from tasks.data.tables import SPLIT, feature_names, read_json, read_model_table, table_writer
from tasks.files import replay_paths, split_path
from tasks.params import Train
from tasks.training.run import model_config, n_outputs, save_model_file
from tests.conftest import copy_repo, run, set_params
from tests.e2e.test_training import (
    FAST,
    assert_same_weights,
    complete,
    newest_step,
    shown,
    start,
    train,
    train_history,
    wait_for,
    warm_start,
    weights,
)

pytestmark = pytest.mark.slow

SPLITS = Path("data/splits")  # paths.splits in params.yaml
OLD, NEW = 48, 48  # buffer rows of the parent's data version (experience 0) and of this one (1)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A repo whose data is ready for training, as test_training's."""
    repo = copy_repo(tmp_path_factory.mktemp("prepared") / "repo", master_port=29800)
    set_params(repo, FAST)
    run(["dvc", "repro", "augment"], repo)
    return repo


@pytest.fixture(scope="module")
def parent(prepared, tmp_path_factory) -> dict:
    """A parent model file as train writes it (the family and config in its metadata), fresh weights."""
    table = read_model_table(split_path(prepared / SPLITS, "train"))
    config = model_config(Train(model="mlp"), table.schema, len(feature_names(table.schema)),
                          n_outputs(read_json(prepared / "data/clean/transform.json", "clean transform")))
    torch.manual_seed(7)
    module = build("mlp", config)
    folder = tmp_path_factory.mktemp("parent")
    save_model_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
                    folder / "model/model.safetensors", {"model": "mlp", "config": json.dumps(config, sort_keys=True)})
    return {"repo": folder}


def with_buffer(repo: Path) -> Path:
    """replay.parquet (training rows, split "replay") and replay.json beside the splits, as augment writes them."""
    table = read_model_table(split_path(repo / SPLITS, "train")).slice(0, OLD + NEW)
    index = table.schema.get_field_index(SPLIT)
    table = table.set_column(index, pa.field(SPLIT, pa.string(), nullable=False), pa.array(["replay"] * len(table)))
    rows, experience = replay_paths(repo / SPLITS)
    with table_writer(rows, table.schema) as w:
        w.write_table(table)
    experience.write_text(json.dumps({"current_experience": 1, "experience": [0] * OLD + [1] * NEW}))
    return repo


def continual_repo(prepared, parent, dest: Path, port: int, **changes) -> Path:
    repo, _, _ = warm_start(prepared, parent, dest, port, **{"train.init.freeze": [], "train.epochs": 2,
                                                             "train.init.backbone_lr_ratio": 1.0, **changes})
    return with_buffer(repo)


def test_replay_trains_on_buffer_rows_and_resumes_exactly_after_kill_9(prepared, parent, tmp_path):
    replay = {"continual.strategy": "replay", "continual.buffer.rows_per_batch": 8}
    whole = continual_repo(prepared, parent, tmp_path / "whole" / "repo", 29801, **replay)
    out = train(whole).stdout
    history = train_history(whole)
    assert [h["epoch"] for h in history] == [1, 2] and all(h["replay_loss"] > 0 for h in history)
    assert f"replay_loss {history[-1]['replay_loss']:.4f}" in out  # on the epoch's train line
    assert json.loads((whole / "reports/train/metrics.json").read_text())["replay_loss"] > 0  # DVCLive too

    repo = continual_repo(prepared, parent, tmp_path / "killed" / "repo", 29802, **replay)
    target = random.Random().choice([6, 8, 11, 13, 21, 24, 26, 29])  # of 38 steps (19 an epoch): mid-epoch
    proc = start(repo)
    wait_for(lambda: newest_step(repo) >= target, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = complete(repo)
    assert done, "the killed run left no checkpoint"
    rerun = train(repo).stdout
    assert f"resumed from {shown(repo, done[-1])}" in rerun
    assert_same_weights(weights(repo), weights(whole))  # the same buffer rows in every batch, before and after
    for a, b in zip(train_history(repo), history):  # the epoch's term counted across the kill as well
        assert a["replay_loss"] == pytest.approx(b["replay_loss"], rel=1e-6) and a["train_loss"] == pytest.approx(
            b["train_loss"], rel=1e-6)


def test_ewc_trains_with_its_penalty_in_the_history_and_is_refused_under_zero_3(prepared, parent, tmp_path):
    ewc = {"continual.strategy": "ewc", "continual.ewc.weight": 100.0}
    repo = continual_repo(prepared, parent, tmp_path / "repo", 29803, **{**ewc, "train.zero_stage": 3})
    refused = train(repo, check=False)
    assert refused.returncode == 2 and "continual.strategy ewc needs whole weights" in refused.stderr
    assert "train.zero_stage 3" in refused.stderr and not complete(repo)  # before any rank started
    set_params(repo, {"train.zero_stage": 1})
    out = train(repo).stdout
    history = train_history(repo)
    assert all(h["ewc_penalty"] > 0 for h in history) and history[-1]["val_accuracy"] > 0.5
    assert f"ewc_penalty {history[-1]['ewc_penalty']:.4f}" in out
