"""The scheduled deployment of prefect.yaml, against a real `prefect server start`.

Slow: a server, `prefect deploy --all`, a process worker, and one whole pipeline run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request

import pytest

from tests.conftest import copy_repo, run

pytestmark = pytest.mark.slow
STAGES = ["ingest", "clean", "augment", "train", "evaluate", "register"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(url: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"},
                                 method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


@pytest.fixture
def server(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path / "prefect-home"),
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                api(url, "/health")
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "prefect server did not start"
                time.sleep(1)
        yield url, env
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_nightly_deployment_runs_on_a_process_worker(tmp_path, server):
    url, env = server
    repo = copy_repo(tmp_path / "repo", master_port=29640)
    env = env | {"PWD": str(repo)}  # prefect.yaml's pull step binds the deployment to this checkout
    run(["prefect", "work-pool", "create", "training", "--type", "process"], repo, env=env)
    run(["prefect", "--no-prompt", "deploy", "--all"], repo, env=env)

    (deployment,) = api(url, "/deployments/filter", {})
    assert deployment["name"] == "nightly"
    assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["0 2 * * *"]

    out = run(["prefect", "deployment", "run", "training-pipeline/nightly"], repo, env=env).stdout
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    run(["prefect", "worker", "start", "--pool", "training", "--run-once"], repo, env=env, timeout=500)

    flow_run = api(url, f"/flow_runs/{flow_run_id}")
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]
    task_runs = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert sorted(t["name"].rsplit("-", 1)[0] for t in task_runs) == sorted(STAGES)
    assert all(t["state_type"] == "COMPLETED" for t in task_runs)
    artifacts = api(url, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})
    assert {"evaluation-metrics", "registered-model"} <= {a["key"] for a in artifacts}
    # the run happened in the deployed checkout: it registered a version there
    lineage = json.loads((repo / "registry/lineage.json").read_text())
    assert lineage["prefect_flow_run_id"] == flow_run_id
