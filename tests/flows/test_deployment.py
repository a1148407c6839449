"""The scheduled deployments of prefect.yaml, against a real `prefect server start` on 127.0.0.1.

Slow, and marked `server` (run alone with `pytest -m server`): a server, `prefect deploy --all`, a
process worker and one pipeline run with overrides; then what the run left behind (a commit on its
branch, data on the DVC remote) restored in fresh clones, from a local folder and from an S3 server.
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
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, copy_repo, run

pytestmark = [pytest.mark.slow, pytest.mark.server]
STAGES = ["ingest", "parent", "clean", "buffer", "augment", "train", "evaluate", "register"]
ARTIFACTS = {"run-plan", "data-report", "training-progress", "training-epochs", "evaluation-metrics",
             "registered-model", "model-card"}
OVERRIDES = {"train.model": "mlp", "train.epochs": 2}
SCREENSHOTS = ROOT / "test-output"  # kept after the run (gitignored), for people to look at


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


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = os.environ | {"PREFECT_API_URL": url, "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
                        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                        "PREFECT_UI_API_URL": url}  # with --port alone the UI would call port 4200
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


@pytest.fixture(scope="module")
def deployed_run(tmp_path_factory, server):
    """`prefect deploy --all`, the nightly deployment run once by a process worker, with overrides."""
    url, env = server
    base = tmp_path_factory.mktemp("worker")
    repo = copy_repo(base / "repo", master_port=29640)
    env = env | {"PWD": str(repo)}  # prefect.yaml's pull step binds the deployments to this checkout
    run(["prefect", "work-pool", "create", "training", "--type", "process"], repo, env=env)
    run(["prefect", "--no-prompt", "deploy", "--all"], repo, env=env)
    out = run(["prefect", "deployment", "run", "training-pipeline/nightly",
               "--params", json.dumps({"overrides": OVERRIDES})], repo, env=env).stdout
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    run(["prefect", "worker", "start", "--pool", "training", "--run-once"], repo, env=env, timeout=500)
    return url, repo, flow_run_id


def test_deploy_all_creates_both_schedules_with_overlap_policies(deployed_run):
    url, _, _ = deployed_run
    deployments = {d["name"]: d for d in api(url, "/deployments/filter", {})}
    assert set(deployments) == {"nightly", "new-data", "hpo"}
    assert deployments["hpo"]["entrypoint"] == "flows/hpo.py:hpo" and deployments["hpo"]["parameters"]["register_best"]
    assert [s["schedule"]["cron"] for s in deployments["nightly"]["schedules"]] == ["0 2 * * *"]
    assert deployments["new-data"]["parameters"]["only_if_new_data"] is True
    policy = {n: (d["global_concurrency_limit"]["limit"], d["concurrency_options"]["collision_strategy"])
              for n, d in deployments.items()}
    assert policy == {"nightly": (1, "ENQUEUE"), "new-data": (1, "CANCEL_NEW"), "hpo": (1, "ENQUEUE")}


def test_worker_run_completes_with_task_runs_and_artifacts(deployed_run):
    url, repo, flow_run_id = deployed_run
    flow_run = api(url, f"/flow_runs/{flow_run_id}")
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]["message"]
    version = json.loads((repo / "data/raw/manifest.json").read_text())["version"]
    assert flow_run["name"].startswith(f"data-{version}-")  # named after the data version
    task_runs = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert sorted(t["name"].rsplit("-", 1)[0] for t in task_runs) == sorted(STAGES)
    assert all(t["state_type"] == "COMPLETED" for t in task_runs)
    artifacts = {a["key"]: a for a in api(url, "/artifacts/filter",
                                          {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})}
    assert ARTIFACTS <= set(artifacts)
    assert artifacts["training-progress"]["data"] == 100.0  # updated every epoch, to the last
    assert len(json.loads(artifacts["training-epochs"]["data"])) == OVERRIDES["train.epochs"]
    assert "data:image/png;base64," in artifacts["registered-model"]["data"]  # figures the UI shows
    assert artifacts["model-card"]["data"] == (repo / "registry/model_card.md").read_text()
    lineage = json.loads((repo / "registry/lineage.json").read_text())
    assert lineage["prefect_flow_run_id"] == flow_run_id


def test_the_run_is_committed_on_its_branch_with_its_overrides(deployed_run):
    _, repo, _ = deployed_run
    log = run(["git", "log", "--format=%s", "pipeline-runs"], repo).stdout.splitlines()
    assert log[0].startswith("params.yaml back as it was")
    # the run's state: the flow's own commit, or register's when that already committed all of it
    assert (log[1].startswith("Pipeline run ") and json.dumps(OVERRIDES) in log[1]) or log[1].startswith("Register ")
    # the run's commit records its params the DVC way: in params.yaml and in dvc.lock
    params = yaml.safe_load(run(["git", "show", "pipeline-runs~1:params.yaml"], repo).stdout)
    locked = yaml.safe_load(run(["git", "show", "pipeline-runs~1:dvc.lock"], repo).stdout)
    assert params["train"]["epochs"] == locked["stages"]["train"]["params"]["params.yaml"]["train"]["epochs"] == 2
    # params.yaml is back, unchanged byte for byte, and nothing is left uncommitted
    assert (repo / "params.yaml").read_text() == run(["git", "show", "main:params.yaml"], repo).stdout
    assert run(["git", "status", "--porcelain"], repo).stdout == ""  # the .gitignore files DVC wrote too


def restored_in_fresh_clone(repo: Path, dest: Path, remote_args: list[list[str]], name: str) -> Path:
    """git clone + DVC remote config + `dvc pull`: the data, checkpoints and model come back."""
    run(["git", "clone", "-q", "--branch", "pipeline-runs", str(repo), str(dest)], dest.parent)
    for args in remote_args:
        run(["dvc", "remote", *args], dest)
    run(["dvc", "pull", "-r", name], dest)
    return dest


def assert_same_outputs(repo: Path, clone: Path) -> None:
    tracked = ["data/raw/table.parquet", "data/clean/table.arrow", "data/splits/train.parquet",
               "model/model.safetensors"]
    for f in tracked:
        assert (clone / f).read_bytes() == (repo / f).read_bytes(), f
    checkpoints = sorted(p.relative_to(clone) for p in (clone / "checkpoints").rglob("*") if p.is_file())
    assert checkpoints and checkpoints == sorted(p.relative_to(repo) for p in (repo / "checkpoints").rglob("*")
                                                  if p.is_file())


def test_fresh_clone_restores_everything_from_the_local_remote(deployed_run, tmp_path):
    _, repo, _ = deployed_run
    name = run(["dvc", "remote", "default"], repo).stdout.strip()
    url = run(["dvc", "config", f"remote.{name}.url"], repo).stdout.strip()  # as written, relative to .dvc/
    storage = (repo / ".dvc" / url).resolve()
    assert any(storage.rglob("*")), f"nothing was pushed to {storage}"
    # on another machine the remote is wherever that machine reaches the storage: set it there
    clone = restored_in_fresh_clone(repo, tmp_path / "clone", [["modify", "--local", name, "url", str(storage)]],
                                    name)
    assert_same_outputs(repo, clone)


def test_fresh_clone_restores_everything_from_s3(deployed_run, tmp_path, s3):
    _, repo, _ = deployed_run
    client, endpoint = s3
    s3_remote = [["add", "s3", "s3://data/dvc-store"], ["modify", "s3", "endpointurl", endpoint]]
    for verb, *args in s3_remote:
        run(["dvc", "remote", verb, "--local", *args], repo)
    run(["dvc", "push", "-r", "s3"], repo)
    assert client.list_objects_v2(Bucket="data", Prefix="dvc-store/")["KeyCount"] > 0
    clone = restored_in_fresh_clone(repo, tmp_path / "clone", s3_remote, "s3")
    assert_same_outputs(repo, clone)


@pytest.mark.browser
def test_the_ui_shows_the_run_with_its_task_runs_and_artifacts(deployed_run):
    from tests import browser

    if not browser.chromium_path():
        pytest.skip("Debian's chromium is not installed (`apt-get install -y chromium`, as .ci/run does)")
    url, _, flow_run_id = deployed_run
    SCREENSHOTS.mkdir(exist_ok=True)
    with browser.open_page(f"{url.removesuffix('/api')}/runs/flow-run/{flow_run_id}", height=2200) as page:
        page.click_text("Task Runs")
        page.wait_for_text(re.compile(r"^register-\w+$"))
        shown = page.text()
        assert all(re.search(rf"\b{stage}-\w+", shown) for stage in STAGES), shown[:2000]
        page.screenshot(SCREENSHOTS / "flow-run-task-runs.png")
        page.click_text("Artifacts")
        page.wait_for_text("registered-model")
        shown = page.text()
        assert all(key in shown for key in ARTIFACTS), shown[:2000]
        page.screenshot(SCREENSHOTS / "flow-run-artifacts.png")
        page.click_text("registered-model")  # the figures are images the UI draws, not links
        img = page.page.locator("img[src^='data:image/png']").first
        img.wait_for(timeout=15000)
        assert img.evaluate("i => i.complete && i.naturalWidth > 100")
        page.screenshot(SCREENSHOTS / "registered-model.png")


def test_the_hpo_deployment_searches_and_registers_its_winner_through_the_worker(deployed_run, server):
    url, repo, _ = deployed_run
    env = server[1] | {"PWD": str(repo)}
    out = run(["prefect", "deployment", "run", "hpo/hpo", "--params", json.dumps({"trials": 1})], repo,
              env=env).stdout
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", out).group(1)
    run(["prefect", "worker", "start", "--pool", "training", "--run-once"], repo, env=env, timeout=900)
    flow_run = api(url, f"/flow_runs/{flow_run_id}")
    assert flow_run["state_type"] == "COMPLETED", flow_run["state"]["message"]
    task_runs = api(url, "/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})
    assert [t["name"] for t in task_runs if t["name"].startswith("digits-search-t")] == ["digits-search-t000"]
    artifacts = {a["key"] for a in api(url, "/artifacts/filter",
                                       {"artifacts": {"flow_run_id": {"any_": [flow_run_id]}}})}
    assert {"hpo-trials", "hpo-progress", "hpo-best"} <= artifacts
    lineage = json.loads((repo / "registry/lineage.json").read_text())
    assert lineage["search"]["experiment"] == "digits-search-t000"
    assert lineage["prefect_flow_run_id"] == flow_run_id  # the search that registered it
