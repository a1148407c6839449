"""The whole pipeline from a fresh copy of the repo: DVC, DeepSpeed (2 CPU ranks), GTO, Prefect.

Slow (a few minutes): `pytest -m slow` runs these alone; CI runs them too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks.training.checkpoints import MARKER, tags
from tests.conftest import GIT_ENV, copy_repo, run, set_params

pytestmark = pytest.mark.slow
# DeepSpeed's start-up lines: its launcher's INFO log, the accelerator detection, the ranks' own notices
NOISE = ("Setting accelerator to CPU", "Setting CUDA_VISIBLE_DEVICES", "[INFO]", "WORLD INFO DICT",
         "spawned with command", "built successfully", "DeepSpeed info: version")
DATA_STAGES = ("ingest", "clean", "buffer", "augment")


def lock(repo) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def outs(repo, stage) -> dict:
    return {o["path"]: o["md5"] for o in lock(repo)[stage]["outs"]}


@pytest.fixture(scope="module")
def repro_repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repro"), master_port=29610)
    res = run(["dvc", "repro"], repo)
    return repo, res.stdout + res.stderr


@pytest.fixture(scope="module")
def flow_repo(tmp_path_factory, prefect_server):
    from flows.pipeline import pipeline

    repo = copy_repo(tmp_path_factory.mktemp("flow"), master_port=29620)
    state = pipeline(repo=str(repo), return_state=True)
    return repo, state.result(), state.state_details.flow_run_id


def test_dvc_repro_trains_evaluates_and_registers(repro_repo):
    repo, out = repro_repo
    for stage in ("ingest", "clean", "augment", "train", "evaluate", "register"):
        assert f"Running stage '{stage}'" in out
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert metrics["accuracy"] >= 0.90, metrics
    # a clean tree: what the run wrote is committed with the version (dvc.lock whole) or ignored, and DVC
    # asks no `git add` of files the run already committed
    assert run(["git", "status", "--porcelain"], repo).stdout == ""
    assert "To track the changes with git" not in out
    # a log, not a terminal: a plain line per epoch, no progress bar, none of DeepSpeed's start-up lines
    # (train.verbose: false; with it on, tests/e2e/test_training_output.py)
    assert "train: epoch 1/8 train_loss" in out and "train: epoch 8/8 train_loss" in out
    assert "\r" not in out and "it/s]" not in out
    for noise in NOISE:
        assert noise not in out, noise

    # a complete DeepSpeed checkpoint after the last epoch: ZeRO stage 0 keeps the whole optimizer state with the
    # weights (rank 0 writes it), and every rank its own generators and position
    (run_dir,) = [d for d in (repo / "checkpoints").iterdir() if d.is_dir()]
    latest = tags(run_dir)[-1]
    epochs = yaml.safe_load((repo / "params.yaml").read_text())["train"]["epochs"]
    assert json.loads((run_dir / latest / MARKER).read_text())["resumes_at"] == {"epoch": epochs + 1, "batch": 0}
    files = {f.name for f in (run_dir / latest).iterdir()}
    assert {"mp_rank_00_model_states.pt", "rank0.safetensors", "rank1.safetensors"} <= files
    engine_state = torch.load(run_dir / latest / "mp_rank_00_model_states.pt", weights_only=False)
    assert engine_state["optimizer"]["state"], "the optimizer's moments are in the checkpoint"
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 2
    ds = json.loads((run_dir / "ds_config.json").read_text())  # derived from params.yaml's train section
    train = yaml.safe_load((repo / "params.yaml").read_text())["train"]
    assert ds["train_batch_size"] == train["batch_size"] * train["grad_accum"] * 2
    assert ds["zero_optimization"]["stage"] == train["zero_stage"]

    weights = load_file(str(repo / "model/model.safetensors"))
    assert weights and all(t.dtype.is_floating_point for t in weights.values())

    git_tags = run(["git", "tag"], repo).stdout.split()
    assert "digits@v0.0.1" in git_tags and "digits#prod#1" in git_tags
    # DVC resolves the registered version and the production stage to these exact weights
    for how in (["--rev", "v0.0.1"], ["--stage", "prod"]):
        run(["dvc", "artifacts", "get", ".", "digits", *how, "-o", str(repo / "got.safetensors"), "-f"], repo)
        assert (repo / "got.safetensors").read_bytes() == (repo / "model/model.safetensors").read_bytes()
    (repo / "got.safetensors").unlink()
    lineage = json.loads(run(["git", "show", "digits@v0.0.1:registry/lineage.json"], repo).stdout)
    committed_lock = yaml.safe_load(run(["git", "show", "digits@v0.0.1:dvc.lock"], repo).stdout)["stages"]
    for stage in DATA_STAGES + ("train",):
        assert lineage["data"][stage] == {o["path"]: o["md5"] for o in committed_lock[stage]["outs"]}


def test_second_repro_runs_no_stage(repro_repo):
    repo, _ = repro_repo
    before = (repo / "dvc.lock").read_bytes()
    out = run(["dvc", "repro"], repo).stdout
    assert re.findall(r"Running stage '(\w+)'", out) == ["parent"]  # it re-resolves train.init.from, always
    assert (repo / "dvc.lock").read_bytes() == before


def test_flow_after_repro_executes_nothing(repro_repo, prefect_server):
    from flows.pipeline import pipeline

    repo, _ = repro_repo
    before = (repo / "dvc.lock").read_bytes()
    summaries = pipeline(repo=str(repo))
    assert {s: v["status"] for s, v in summaries.items()} == {"parent": "ran"} | {
        s: "skipped" for s in ("ingest", "clean", "buffer", "augment", "train", "evaluate", "register")}
    assert (repo / "dvc.lock").read_bytes() == before


def test_flow_from_scratch_matches_repro_data(repro_repo, flow_repo):
    repo, _ = repro_repo
    fresh, summaries, _ = flow_repo
    assert all(s["status"] == "ran" for s in summaries.values())
    for stage in DATA_STAGES:
        assert outs(fresh, stage) == outs(repo, stage)
    assert "digits@v0.0.1" in run(["git", "tag"], fresh).stdout.split()


def test_flow_run_shows_stage_output_and_artifacts(flow_repo):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    repo, _, flow_run_id = flow_repo
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:  # logs reach the API in batches
            logs = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)]
            if any("register: digits v0.0.1" in m for m in logs) or time.monotonic() > deadline:
                break
            time.sleep(1)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert any(m.startswith("train: epoch 1/8 train_loss") for m in logs)  # streamed from rank 0
    assert any(m.startswith("evaluate: test accuracy") for m in logs)
    assert any("register: digits v0.0.1" in m for m in logs)
    by_key = {a.key: a for a in artifacts}
    table = json.loads(by_key["evaluation-metrics"].data)
    metrics = json.loads((repo / "reports/metrics.json").read_text())
    assert table[-1]["class"] == "macro" and table[-1]["f1"] == round(metrics["f1_macro"], 4)
    assert "digits v0.0.1" in by_key["registered-model"].data
    assert "1 data version(s)" in by_key["continual"].data and "Accuracy matrix" in by_key["continual"].data


def test_interrupted_training_resumes_from_its_checkpoint(flow_repo):
    repo, _, _ = flow_repo
    shutil.rmtree(repo / "checkpoints")
    set_params(repo, {"train.epochs": 3, "train.master_port": 29630})
    env = os.environ | GIT_ENV
    proc = subprocess.Popen([sys.executable, "-m", "tasks.train"], cwd=repo, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((repo / "checkpoints").glob(f"*/step*/{MARKER}")):
        assert proc.poll() is None and time.monotonic() < deadline, "training ended before its first checkpoint"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    (marker,) = sorted((repo / "checkpoints").glob(f"*/step*/{MARKER}"))[-1:]
    epoch = json.loads(marker.read_text())["resumes_at"]["epoch"]  # the first epoch not yet finished
    assert epoch in (2, 3), epoch

    out = run(["dvc", "repro", "train"], repo).stdout
    assert f"train: resumed from checkpoints/{marker.parent.parent.name}/{marker.parent.name} (epoch {epoch}" in out
    assert f"epoch {epoch - 1}/3 train_loss" not in out  # not trained again
    assert "epoch 3/3 train_loss" in out
    history = json.loads((repo / "reports/train_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]


def test_corrupt_checkpoint_is_skipped_with_its_name(flow_repo):
    repo, _, _ = flow_repo  # after the resume test: a finished run
    (run_dir,) = [d for d in (repo / "checkpoints").iterdir() if d.is_dir()]
    newest = tags(run_dir)[-1]
    states = run_dir / newest / "mp_rank_00_model_states.pt"
    states.write_bytes(states.read_bytes()[:100])  # truncated, as by a full disk
    res = run([sys.executable, "-m", "tasks.train"], repo)
    assert f"skipping checkpoint checkpoints/{run_dir.name}/{newest}: mp_rank_00_model_states.pt has 100 bytes" \
        in res.stdout
    assert "train: resumed from" in res.stdout  # the previous good one
    assert (repo / "model/model.safetensors").exists()


@pytest.mark.parametrize("problem,expected", [
    ("empty_source", "empty.csv: the file is empty"),
    ("no_label_column", "column 'label': label column not found"),
    ("unknown_param", "train.epochz: unknown key"),
])
def test_bad_input_stops_before_training_and_loses_nothing(repro_repo, problem, expected):
    repo, _ = repro_repo
    model_before = (repo / "model/model.safetensors").read_bytes()
    raw_before = (repo / "data/raw/table.parquet").read_bytes()
    raw_md5 = outs(repo, "ingest")["data/raw/table.parquet"]
    sources = repo / "data/sources"
    if problem == "empty_source":
        (sources / "empty.csv").write_text("")
        set_params(repo, {"ingest.source": "data/sources/empty.csv", "ingest.header": True})
    elif problem == "no_label_column":
        (sources / "nolabel.csv").write_text("a,b,target\n1,2,0\n3,4,1\n")
        set_params(repo, {"ingest.source": "data/sources/nolabel.csv", "ingest.header": True})
    else:
        params = yaml.safe_load((repo / "params.yaml").read_text())
        params["train"]["epochz"] = 3
        (repo / "params.yaml").write_text(yaml.safe_dump(params))
    try:
        res = run(["dvc", "repro"], repo, check=False)
        text = res.stdout + res.stderr
        assert res.returncode != 0
        assert expected in text
        assert "spawned with command" not in text and "train: epoch" not in text  # no rank started
        # the last good snapshot and model are still in place
        assert (repo / "model/model.safetensors").read_bytes() == model_before
        assert (repo / "data/raw/table.parquet").read_bytes() == raw_before
    finally:
        run(["git", "checkout", "--", "params.yaml"], repo)
        for f in sources.glob("*.csv"):
            f.unlink()
    assert run(["dvc", "status"], repo).stdout.split() == ["parent:", "always", "changed"]  # and nothing else
    assert outs(repo, "ingest")["data/raw/table.parquet"] == raw_md5
