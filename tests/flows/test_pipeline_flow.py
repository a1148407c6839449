"""The flow's stage tasks against a real Prefect server and real DVC, on toy stages.

The whole pipeline through the flow runs in tests/e2e.
"""

import os
import subprocess
import time

import pytest
import yaml
from prefect import flow, task

from flows.pipeline import ingest
from flows.stages import StageFailed, run_dvc_stage
from tests.conftest import GIT_ENV


def toy_repo(path, cmd):
    stages = {"stages": {"ingest": {"cmd": cmd, "outs": ["out.txt"]}}}
    (path / "dvc.yaml").write_text(yaml.safe_dump(stages))
    env = os.environ | GIT_ENV
    subprocess.run(["git", "init", "-q"], cwd=path, check=True, env=env)
    subprocess.run(["dvc", "init", "-q"], cwd=path, check=True, env=env)
    return path


def test_transient_failure_is_retried(tmp_path, prefect_server):
    # fails with exit code 75 (transient I/O) twice, then succeeds
    cmd = ("python -c \"import pathlib,sys; p=pathlib.Path('n'); n=int(p.read_text()) if p.exists() else 0; "
           "p.write_text(str(n+1)); open('out.txt','w').write('ok'); sys.exit(75 if n < 2 else 0)\"")
    repo = toy_repo(tmp_path, cmd)

    @flow
    def once():
        return ingest.with_options(retry_delay_seconds=0)(stage="ingest", repo=str(repo))

    summary = once()
    assert summary["status"] == "ran"
    assert (repo / "n").read_text() == "3"
    assert summary["outs"]["out.txt"]


def test_input_error_is_not_retried_and_names_the_problem(tmp_path, prefect_server):
    cmd = "python -c \"import sys; print('error: data/x.csv: label column missing', file=sys.stderr); sys.exit(2)\""
    repo = toy_repo(tmp_path, cmd)

    @flow
    def once():
        return ingest.with_options(retry_delay_seconds=0)(stage="ingest", repo=str(repo))

    with pytest.raises(StageFailed, match="label column missing"):
        once()


def test_a_hanging_stage_is_killed_with_its_process_group(tmp_path, prefect_server):
    repo = toy_repo(tmp_path, "sh -c 'sleep 299.5 & sleep 299.5; touch out.txt'")
    hanging = task(run_dvc_stage, name="ingest")

    @flow
    def once():
        return hanging(stage="ingest", repo=str(repo), timeout_s=3)

    start = time.monotonic()
    with pytest.raises(StageFailed, match="timeout"):
        once()
    assert time.monotonic() - start < 60
    left = subprocess.run(["pgrep", "-f", "sleep 299.5"], capture_output=True, text=True).stdout
    assert left == ""


def test_forced_stage_reruns_although_dvc_sees_no_change(tmp_path, prefect_server):
    """What the flow does for a URL source: DVC cannot see a remote file change, so ingest is forced."""
    repo = toy_repo(tmp_path, "python -c \"import time; open('out.txt','w').write(str(time.time_ns()))\"")

    @flow
    def twice(force: bool):
        return [ingest(stage="ingest", repo=str(repo), force=force) for _ in range(2)]

    assert [s["status"] for s in twice(False)] == ["ran", "skipped"]
    assert [s["status"] for s in twice(True)] == ["ran", "ran"]
