"""train, for real (DeepSpeed, 2 CPU ranks over gloo): exact resume after kill -9, checkpoint checks,
SIGTERM, non-finite loss, retention, early stopping; a warm start's frozen weights through all of it.

Slow: `pytest -m slow tests/e2e/test_training.py`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.training.checkpoints import MARKER, tags
from tests.conftest import copy_repo, run, set_params

pytestmark = pytest.mark.slow

FAST = {"train.model": "mlp", "train.epochs": 3, "train.batch_size": 32, "train.checkpoint.every_steps": 5,
        "train.checkpoint.keep_last": 2, "augment.copies": 0}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A repo whose data is ready for training (ingest, clean, augment done)."""
    repo = copy_repo(tmp_path_factory.mktemp("prepared") / "repo", master_port=29770)
    set_params(repo, FAST)
    run(["dvc", "repro", "augment"], repo)
    return repo


def fresh(prepared: Path, dest: Path, port: int, **changes) -> Path:
    shutil.copytree(prepared, dest, symlinks=True)
    set_params(dest, {"train.master_port": port, **changes})
    return dest


def train(repo: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "tasks.train"], repo, check=check, timeout=300)


def start(repo: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tasks.train"], cwd=repo, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def run_dir(repo: Path) -> Path:
    (d,) = [p for p in (repo / "checkpoints").iterdir() if p.is_dir()]
    return d


def complete(repo: Path) -> list[str]:
    if not (repo / "checkpoints").exists() or not any((repo / "checkpoints").iterdir()):
        return []
    d = run_dir(repo)
    return [t for t in tags(d) if (d / t / MARKER).exists()]


def shown(repo: Path, tag: str) -> str:
    """A checkpoint's path as train prints it (relative to the repo, as params.yaml gives it)."""
    return str(run_dir(repo).relative_to(repo) / tag)


def newest_step(repo: Path) -> int:
    done = complete(repo)
    return int(done[-1][4:]) if done else -1


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 240) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training ended ({proc.returncode}) before the moment came:\n{proc.stdout.read()}")
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.05)


def train_history(repo: Path) -> list[dict]:
    return json.loads((repo / "reports/train_history.json").read_text())


def weights(repo: Path) -> dict[str, torch.Tensor]:
    return load_file(repo / "model/model.safetensors")


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= 1e-6, f"weights differ by up to {worst}"


@pytest.fixture(scope="module")
def reference(prepared, tmp_path_factory) -> dict:
    """An uninterrupted run: its final weights, and what it left in the checkpoint folder."""
    repo = fresh(prepared, tmp_path_factory.mktemp("ref") / "repo", 29771)
    out = train(repo).stdout
    return {"weights": weights(repo), "complete": complete(repo), "stdout": out, "repo": repo}


def test_uninterrupted_run_keeps_the_last_k_and_the_best_and_logs_with_dvclive(reference):
    repo = reference["repo"]
    history = train_history(repo)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert len(reference["complete"]) <= 3  # keep_last 2, plus the best when it is older
    best = min(history, key=lambda h: h["val_loss"])
    meta_best = json.loads((run_dir(repo) / reference["complete"][-1] / MARKER).read_text())
    assert meta_best["world_size"] == 2 and meta_best["resumes_at"] == {"epoch": 4, "batch": 0}
    assert f"val_loss {best['val_loss']:.4f}" in reference["stdout"]
    # DVCLive: one row per epoch for each metric, the last epoch's values as the summary
    rows = (repo / "reports/train/plots/metrics/val_loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "val_loss"] and len(rows) == 4
    summary = json.loads((repo / "reports/train/metrics.json").read_text())
    assert summary["val_accuracy"] == pytest.approx(history[-1]["val_accuracy"])
    assert json.loads((run_dir(repo) / "ds_config.json").read_text())["optimizer"]["type"] == "AdamW"


def test_kill_9_then_a_truncated_checkpoint_still_ends_with_the_same_weights(prepared, reference, tmp_path):
    repo = fresh(prepared, tmp_path / "repo", 29772)
    target = random.Random().randint(10, 45)  # of 57 optimizer steps (19 a rank per epoch): a random moment
    proc = start(repo)
    wait_for(lambda: newest_step(repo) >= target, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # every process of the run, no chance to clean up
    proc.wait()
    done = complete(repo)
    assert done, "the killed run left no checkpoint"
    # the newest checkpoint gets cut short after the fact: it must be skipped for the one before
    newest = run_dir(repo) / done[-1] / "mp_rank_00_model_states.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    out = train(repo).stdout
    assert f"skipping checkpoint {shown(repo, done[-1])}: mp_rank_00_model_states.pt has" in out
    if len(done) > 1:
        assert f"resumed from {shown(repo, done[-2])}" in out
    assert_same_weights(weights(repo), reference["weights"])


def test_sigterm_checkpoints_before_exit_and_the_rerun_resumes_from_it(prepared, reference, tmp_path):
    repo = fresh(prepared, tmp_path / "repo", 29773)
    proc = start(repo)
    wait_for(lambda: newest_step(repo) >= 10, proc)
    proc.send_signal(signal.SIGTERM)  # to the stage's process, as a scheduler or Prefect would
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    newest = complete(repo)[-1]
    record = json.loads((run_dir(repo) / newest / MARKER).read_text())
    assert record["reason"] == "preempted" and record["resumes_at"]["batch"] > 0, record  # mid-epoch
    assert "SIGTERM: checkpoint" in out
    assert not (repo / "model/model.safetensors").exists()  # an interrupted run registers nothing
    # another number of processes cannot continue this run exactly: a clear error, nothing touched
    set_params(repo, {"train.num_procs": 1})
    other = train(repo, check=False)
    assert other.returncode != 0
    assert (f"{shown(repo, newest)}: an unfinished run of these params and data, written by 2 processes; this "
            f"run has 1") in other.stdout + other.stderr
    assert "Set train.num_procs: 2" in other.stdout + other.stderr and complete(repo)[-1] == newest
    assert "train.checkpoint.reshard: true to continue it with 1" in other.stdout + other.stderr
    # ... but it goes on with 1 from where it stopped when asked (a copy: the exact resume below needs the run)
    copy = tmp_path / "resharded"
    shutil.copytree(repo, copy, symlinks=True)
    set_params(copy, {"train.num_procs": 1, "train.checkpoint.reshard": True, "train.master_port": 29781})
    assert f"train: continuing {shown(repo, newest)}, written by 2 processes, with 1" in train(copy).stdout
    history = train_history(copy)
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["val_accuracy"] > 0.8
    assert [d.name[-3:] for d in (copy / "checkpoints").iterdir() if d.is_dir()] == ["-w1"]  # the old run went
    assert all(torch.isfinite(w).all() for w in weights(copy).values())
    set_params(repo, {"train.num_procs": 2})
    rerun = train(repo).stdout
    assert f"resumed from {shown(repo, newest)}" in rerun
    assert_same_weights(weights(repo), reference["weights"])


def test_a_zero2_run_continues_with_another_count_through_deepspeeds_universal_checkpoint(prepared, tmp_path):
    repo = fresh(prepared, tmp_path / "repo", 29782, **{"train.zero_stage": 2})
    proc = start(repo)
    wait_for(lambda: newest_step(repo) >= 10, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    newest = complete(repo)[-1]
    shards = {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}  # Adam's state in two parts
    assert shards <= {f.name for f in (run_dir(repo) / newest).iterdir()}
    where = shown(repo, newest)  # the 2-process folder goes once the run completes
    set_params(repo, {"train.num_procs": 1, "train.checkpoint.reshard": True})
    out = train(repo).stdout
    # converted by DeepSpeed, loaded, every parameter checked against the conversion, BatchNorm statistics back
    assert (f"train: loaded DeepSpeed's universal checkpoint of {where}: 10 parameters checked against it, "
            f"6 buffers restored from it") in out
    assert f"train: continuing {where}, written by 2 processes, with 1" in out
    history = train_history(repo)
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[-1]["val_accuracy"] > 0.8
    assert [d.name[-3:] for d in (repo / "checkpoints").iterdir() if d.is_dir()] == ["-w1"]


def test_non_finite_loss_stops_the_run_and_nothing_is_registered(prepared, tmp_path):
    repo = fresh(prepared, tmp_path / "repo", 29774, **{"train.optimizer": {"name": "sgd", "lr": 1e12},
                                                         "train.grad_clip": 0.0})
    res = run(["dvc", "repro", "register"], repo, check=False, timeout=300)
    assert res.returncode != 0
    # the loss check comes first, unless the weights blew up on the very step before a checkpoint
    assert "train: the loss is" in res.stdout + res.stderr or "non-finite weights" in res.stdout + res.stderr
    assert not (repo / "model/model.safetensors").exists()
    assert run(["git", "tag"], repo).stdout.strip() == ""  # no version registered
    for tag in complete(repo):  # whatever was checkpointed before the loss blew up is finite
        state = torch.load(run_dir(repo) / tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]
        assert all(torch.isfinite(v).all() for v in state.values())


def test_early_stopping_keeps_the_best_epoch(prepared, tmp_path):
    # a learning rate that overfits fast, and a metric that must rise: stops after 1 bad epoch
    repo = fresh(prepared, tmp_path / "repo", 29775, **{
        "train.epochs": 6, "train.early_stopping": {"metric": "val_accuracy", "patience": 1, "min_delta": 0.5}})
    out = train(repo).stdout
    # min_delta 0.5: no epoch after the first can improve by that much
    assert "train: early stop: val_accuracy did not improve for 1 epoch(s)" in out
    history = train_history(repo)
    assert len(history) == 2
    first_tag = [line for line in out.splitlines() if "(best)" in line]
    assert len(first_tag) == 1 and first_tag[0].startswith("train: epoch 1/6")
    meta = json.loads(subprocess.run([sys.executable, "-c", (
        "import json,sys; from safetensors import safe_open; "
        "print(json.dumps(safe_open(sys.argv[1], 'pt').metadata()))"), str(repo / "model/model.safetensors")],
        capture_output=True, text=True, check=True).stdout)
    epoch1 = json.loads((run_dir(repo) / meta["checkpoint"] / MARKER).read_text())
    assert epoch1["resumes_at"] == {"epoch": 2, "batch": 0}  # the final model is epoch 1's, not the last


def test_two_launchers_as_two_nodes_train_like_one_launcher_with_two_ranks(prepared, reference, tmp_path):
    """Multi-node without ssh: one launcher per node (NODE_RANK), one rank each, node 0's address; on
    one machine the two "nodes" are two host names for it. World size 2, so the very same weights."""
    repo = fresh(prepared, tmp_path / "repo", 29776, **{"train.hostfile": "hostfile", "train.num_procs": 1,
                                                                    "train.verbose": True})
    (repo / "hostfile").write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    # both "nodes" share this machine's cores, as the reference's two ranks did: one thread each, the same
    # arithmetic (a node of its own would give its rank every core, and sums in another order)
    env = os.environ | {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // 2))}
    node1 = subprocess.Popen([sys.executable, "-m", "tasks.train"], cwd=repo, env=env | {"NODE_RANK": "1"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    node0 = run([sys.executable, "-m", "tasks.train"], repo, env=env | {"NODE_RANK": "0"}, timeout=300)
    out1, _ = node1.communicate(timeout=120)
    assert node1.returncode == 0, out1
    assert "dist_world_size=2" in node0.stdout + node0.stderr
    assert_same_weights(weights(repo), reference["weights"])


@pytest.mark.parametrize("stage,port", [(1, 29778), (2, 29779), (3, 29780)])
def test_each_zero_stage_shards_the_optimizer_and_trains_the_same_model(prepared, reference, tmp_path, stage, port):
    repo = fresh(prepared, tmp_path / "repo", port, **{"train.zero_stage": stage})
    train(repo)
    assert json.loads((run_dir(repo) / "ds_config.json").read_text())["zero_optimization"]["stage"] == stage
    last = run_dir(repo) / complete(repo)[-1]
    shards = {f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)}  # each rank's part of the optimizer
    assert shards <= {f.name for f in last.iterdir()}
    # the same data-parallel arithmetic, partitioned: the stage-0 run's losses, up to float rounding (not its
    # weights: a bias ahead of BatchNorm has a zero gradient, so Adam's step on it is the rounding's sign)
    losses = [[e["train_loss"] for e in train_history(r)] for r in (repo, reference["repo"])]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_bf16_on_cpu_ranks_learns(prepared, tmp_path):
    repo = fresh(prepared, tmp_path / "repo", 29777, **{"train.precision": "bf16", "train.epochs": 2,
                                                         "train.mlp": {"hidden": [128, 64], "norm": "layer"}})
    train(repo)
    assert json.loads((run_dir(repo) / "ds_config.json").read_text())["bf16"]["enabled"] is True
    history = train_history(repo)
    assert history[-1]["val_accuracy"] > 0.8  # ten classes: chance is 0.1
    assert all(t.dtype == torch.float32 for t in weights(repo).values())  # the model file is fp32 whatever trained


def warm_start(prepared: Path, reference: dict, dest: Path, port: int, **changes) -> tuple[Path, dict, list[str]]:
    """A repo fine-tuning the reference's model file (a safetensors spec) with its backbone frozen, the parent
    fetched by the parent stage's code; the parent's tensors and the names of its frozen parameters."""
    from models import split
    from tasks.weights import model_from_bytes

    parent = dest.parent / "parent.safetensors"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(reference["repo"] / "model/model.safetensors", parent)
    repo = fresh(prepared, dest, port, **{"train.init.from": str(parent), "train.init.freeze": "backbone",
                                          "train.init.backbone_lr_ratio": 0.1, **changes})
    run([sys.executable, "-m", "tasks.parent"], repo)
    module = model_from_bytes(parent.read_bytes(), str(parent))
    backbone, _ = split(module)
    trainable = {n for n, _ in module.named_parameters()}
    return repo, load_file(parent), [k for k in backbone if k in trainable]  # parameters, not BatchNorm's buffers


def checkpointed(repo: Path, tag: str) -> dict[str, torch.Tensor]:
    return torch.load(run_dir(repo) / tag / "mp_rank_00_model_states.pt", weights_only=True)["module"]


def test_frozen_weights_stay_bit_identical_through_kill_9_and_the_resume_is_exact_across_the_unfreeze_epoch(
        prepared, reference, tmp_path):
    unfreeze = {"train.init.unfreeze_at_epoch": 3}
    whole, parent, frozen = warm_start(prepared, reference, tmp_path / "whole" / "repo", 29791, **unfreeze)
    train(whole)
    ref = weights(whole)
    assert frozen and any(not ref[k].equal(parent[k]) for k in frozen)  # they trained from epoch 3 on

    repo, _, _ = warm_start(prepared, reference, tmp_path / "killed" / "repo", 29792, **unfreeze)
    target = random.Random().randint(21, 35)  # in epoch 2 (19 optimizer steps an epoch): still frozen
    proc = start(repo)
    wait_for(lambda: newest_step(repo) >= target, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = complete(repo)
    assert done
    for tag in done:  # every checkpoint of the frozen epochs holds the parent's very bits
        state = checkpointed(repo, tag)
        assert all(state[k].equal(parent[k]) for k in frozen), tag
    out = train(repo).stdout
    assert f"resumed from {shown(repo, done[-1])}" in out
    assert_same_weights(weights(repo), ref)  # the resumed run unfroze at epoch 3 as the whole one did


@pytest.mark.parametrize("stage,port", [(1, 29793), (2, 29794)])
def test_a_frozen_backbone_stays_bit_identical_under_zero(prepared, reference, tmp_path, stage, port):
    repo, parent, frozen = warm_start(prepared, reference, tmp_path / "repo", port,
                                      **{"train.zero_stage": stage, "train.epochs": 2})
    train(repo)
    assert json.loads((run_dir(repo) / "ds_config.json").read_text())["zero_optimization"]["stage"] == stage
    after = weights(repo)
    assert frozen and all(after[k].equal(parent[k]) for k in frozen)
    assert any(not after[k].equal(parent[k]) for k in after.keys() - set(frozen))  # the head trained
    assert train_history(repo)[-1]["val_accuracy"] > 0.8
