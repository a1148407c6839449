"""plan against what runs really execute, and a failed flow run resumed at its failed stage.

Slow: a small pipeline (MLP, one epoch) on a local CSV source, run once, then changed three ways.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
import re
import signal
import subprocess
import sys
import time

import psutil
import pytest
import yaml

from flows.plan import MAYBE, RUN, SKIP, plan, will_run
from tests.conftest import ROOT, copy_repo, run, set_params

pytestmark = pytest.mark.slow
SOURCE = "data/sources/digits.csv"


def lock_outs(repo) -> dict:
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {s: {o["path"]: o["md5"] for o in e.get("outs", [])} for s, e in stages.items()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("ops"), master_port=29660)
    digits = importlib.resources.files("sklearn.datasets") / "data" / "digits.csv.gz"
    (repo / SOURCE).parent.mkdir(parents=True, exist_ok=True)
    (repo / SOURCE).write_bytes(gzip.decompress(digits.read_bytes()))
    set_params(repo, {"ingest.source": SOURCE, "train.model": "mlp", "train.epochs": 1})
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "local source, small model"], repo)
    run(["dvc", "repro"], repo)
    return repo


def dvc_repro(repo) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", run(["dvc", "repro"], repo).stdout)


def flow_run(repo) -> list[str]:
    from flows.pipeline import pipeline

    return [s for s, summary in pipeline(repo=str(repo)).items() if summary["status"] == "ran"]


def planned_then_ran(repo, driver: str, runner) -> tuple[dict, list[str]]:
    """The plan, then a real run: what ran must be what the plan said, given the outputs that changed."""
    steps = plan(repo, driver)
    before = lock_outs(repo)
    ran = runner(repo)
    after = lock_outs(repo)
    rewritten = {s for s in after if after[s] != before.get(s)}
    assert ran == will_run(steps, rewritten), (steps, ran, rewritten)
    return {s["stage"]: s for s in steps}, [s for s in ran if s != "parent"]  # parent: every run (always_changed)


def test_plan_on_an_up_to_date_repo_runs_nothing(repo):
    steps = {s["stage"]: s["action"] for s in plan(repo, "dvc")}
    assert steps.pop("parent") == RUN  # it re-resolves train.init.from on every run; the rest wait on its bytes
    assert steps.pop("ingest") == SKIP and all(a == MAYBE for a in steps.values()), steps


def test_plan_after_a_params_change(repo):
    set_params(repo, {"train.epochs": 2})
    steps, ran = planned_then_ran(repo, "dvc", dvc_repro)
    assert steps["train"]["action"] == RUN and steps["train"]["reasons"] == ["param train.epochs modified"]
    assert steps["evaluate"]["action"] == MAYBE and steps["clean"]["action"] == MAYBE  # only if parent changes
    assert ran == ["train", "evaluate", "register"]


def test_plan_after_a_code_change_through_the_flow(repo, prefect_server):
    with (repo / "tasks/evaluate.py").open("a") as f:
        f.write("\n# a comment: evaluate reruns, its metrics stay the same\n")
    steps, ran = planned_then_ran(repo, "flow", flow_run)
    assert steps["evaluate"]["reasons"] == ["dep tasks/evaluate.py modified"]
    # register imports evaluate (its reproducibility check evaluates again), so the edit is its dep too
    assert steps["register"]["action"] == RUN and steps["register"]["reasons"] == ["dep tasks/evaluate.py modified"]
    assert ran == ["evaluate", "register"]


def test_plan_after_an_edit_to_the_deepspeed_config_code(repo):
    # tasks/training/engine.py was no dep of train once: an edit there reran nothing and plan said "up to date"
    with (repo / "tasks/training/engine.py").open("a") as f:
        f.write("\n# a comment: the code that derives the DeepSpeed config changed\n")
    runs_before = {d.name for d in (repo / "checkpoints").iterdir() if d.is_dir()}
    steps, ran = planned_then_ran(repo, "dvc", dvc_repro)
    assert steps["train"]["action"] == RUN and steps["train"]["reasons"] == ["dep tasks/training modified"]
    assert steps["augment"]["action"] == MAYBE  # only if parent writes other bytes
    assert ran[0] == "train"  # and whatever its new outputs make stale, as plan said (planned_then_ran)
    runs_after = {d.name for d in (repo / "checkpoints").iterdir() if d.is_dir()}
    assert len(runs_after) == 1 and not runs_after & runs_before  # trained afresh (a new fingerprint), old run gone


def test_the_new_data_schedule_retrains_only_on_new_data(repo, prefect_server):
    from flows.pipeline import pipeline

    set_params(repo, {"train.epochs": 3})  # stale training, but the same data: the hourly run leaves it
    summaries = pipeline(repo=str(repo), only_if_new_data=True)
    assert list(summaries) == ["ingest", "parent"] and summaries["ingest"]["status"] == "skipped"
    assert any(s["stage"] == "train" and s["action"] == RUN for s in plan(repo, "flow"))


def test_plan_after_a_data_change(repo):
    lines = (repo / SOURCE).read_text().splitlines(keepends=True)
    (repo / SOURCE).write_text("".join(lines[:-40]))  # 40 rows fewer
    steps, ran = planned_then_ran(repo, "dvc", dvc_repro)
    assert steps["ingest"]["action"] == RUN and steps["ingest"]["reasons"] == ["dep data/sources modified"]
    assert ran == ["ingest", "clean", "buffer", "augment", "train", "evaluate", "register"]


def test_a_failed_stage_fails_the_flow_with_its_error_and_the_rerun_starts_there(repo, prefect_server):
    from flows.pipeline import pipeline

    set_params(repo, {"train.deepspeed_config": "configs/missing.json", "train.epochs": 1})
    state = pipeline(repo=str(repo), return_state=True)
    assert state.is_failed()
    top = state.message.splitlines()
    assert "stage 'train' failed" in top[0] and "configs/missing.json" in top[1], state.message

    set_params(repo, {"train.deepspeed_config": None})
    summaries = pipeline(repo=str(repo))
    assert {s: v["status"] for s, v in summaries.items() if s in ("ingest", "clean", "augment")} == dict.fromkeys(
        ("ingest", "clean", "augment"), "skipped")
    assert summaries["train"]["status"] == "ran"


def test_a_terminated_flow_run_checkpoints_and_leaves_no_process_behind(repo, tmp_path, prefect_server):
    """SIGTERM to the flow's process, as a Prefect cancellation sends: training checkpoints, then all is gone."""
    from prefect.settings import get_current_settings

    params = (repo / "params.yaml").read_text()
    env = os.environ | {"PREFECT_API_URL": str(get_current_settings().api.url)}  # this session's server
    code = f"from flows.pipeline import pipeline; pipeline(repo={str(repo)!r}, overrides={{'train.epochs': 40}})"
    log = tmp_path / "flow.log"
    with log.open("w") as out:
        flow = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while "train: epoch 2/40" not in log.read_text():
        assert flow.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.5)
    flow.send_signal(signal.SIGTERM)
    assert flow.wait(timeout=60) != 0
    markers = [json.loads(m.read_text()) for m in repo.glob("checkpoints/*/step*/complete.json")]
    assert any(m["reason"] == "preempted" for m in markers), log.read_text()[-3000:]
    left = [p.info for p in psutil.process_iter(["pid", "cmdline", "cwd"]) if p.info["cwd"] == str(repo)]
    assert left == []
    assert (repo / "params.yaml").read_text() == params  # the override is undone
