"""The continual loop through the `new-data` deployment, against a real `prefect server start` and worker.

The digits as a class-incremental stream ({0,1}, {2,3}, ...: ingest.stream), five data versions, five
deployment runs, each fine-tuning the version in prod on the rows it adds: replay, except the third run,
naive fine-tuning, which forgets the earlier classes and is refused by the forgetting gate. Slow, and
marked `server` like tests/flows/test_deployment.py, whose server fixture it shares.
"""

from __future__ import annotations

import json
import re
import sys

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import copy_repo, run, set_params
from tests.flows.test_deployment import api, server  # noqa: F401 - the module's Prefect server fixture

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.timeout(1200)]  # the first test sets up 5 runs
STREAM = {"ingest.stream.kind": "class_incremental", "ingest.stream.experiences": 5, "contract.min_rows": 300,
          "clean.classes": list(range(10)), "train.init.from": "digits@prod", "train.init.unassigned": "scratch",
          "train.model": "mlp", "train.epochs": 4, "continual.buffer.size": 300, "continual.buffer.rows_per_batch": 32,
          "register.max_forgetting": 20.0}  # naive loses most of the old classes; replay a few points
RUNS = ["replay", "replay", "naive", "replay", "replay"]  # the strategy of each data version's run


@pytest.fixture(scope="module")
def loop(tmp_path_factory, server):  # noqa: F811 - the imported fixture
    url, env = server
    repo = copy_repo(tmp_path_factory.mktemp("continual") / "repo", master_port=29660)
    set_params(repo, STREAM)
    run(["git", "commit", "-qam", "a class-incremental stream of the digits, fine-tuned from prod"], repo)
    env = env | {"PWD": str(repo)}
    run(["prefect", "work-pool", "create", "training", "--type", "process"], repo, env=env)
    run(["prefect", "--no-prompt", "deploy", "--all"], repo, env=env)
    ids = []
    for upto, strategy in enumerate(RUNS):
        out = run(["prefect", "deployment", "run", "training-pipeline/new-data", "--params",
                   json.dumps({"overrides": {"ingest.stream.upto": upto, "continual.strategy": strategy}})],
                  repo, env=env).stdout
        ids.append(re.search(r"UUID: ([0-9a-f-]{36})", out).group(1))
        run(["prefect", "worker", "start", "--pool", "training", "--run-once"], repo, env=env, timeout=600)
    return url, repo, ids


def lineage(repo, version: str) -> dict:
    return json.loads(run(["git", "show", f"digits@{version}:registry/lineage.json"], repo).stdout)


def test_five_data_versions_five_runs_each_registered(loop):
    url, repo, ids = loop
    runs = [api(url, f"/flow_runs/{i}") for i in ids]
    assert [r["state_type"] for r in runs] == ["COMPLETED"] * 5, [r["state"]["message"] for r in runs]
    versions = [lineage(repo, f"v0.0.{k}") for k in range(1, 6)]
    assert len({v["data_version"] for v in versions}) == 5  # each run trained on a new data version
    assert [v["continual"]["strategy"] for v in versions] == RUNS
    assert versions[0]["derived_from"] is None  # the first run: prod held nothing yet, so from scratch
    assert [v["derived_from"]["version"] for v in versions[1:]] == ["v0.0.1", "v0.0.2", "v0.0.2", "v0.0.4"]


def test_naive_forgets_and_the_gate_refuses_it_naming_the_test_set(loop):
    _, repo, _ = loop
    naive = lineage(repo, "v0.0.3")
    assert naive["promotion"]["promote"] is False
    assert re.search(r"accuracy on the test set of data version \w+ [\d.]+ is [\d.]+ points below digits@v0.0.2",
                     naive["promotion"]["reason"]), naive["promotion"]["reason"]
    old = [a for dv, a in naive["continual"]["test_sets"].items() if dv != naive["data_version"]]
    assert min(old) < 0.8  # trained on {4, 5} alone, it forgot earlier classes
    notes = run(["git", "notes", "--ref=registry", "show", "digits@v0.0.3^{}"], repo).stdout
    assert '"promote": false' in notes and "points below" in notes  # the refusal is recorded


def test_replay_passes_the_gate_and_holds_prod_at_the_end(loop):
    _, repo, _ = loop
    out = run([sys.executable, "-m", "tasks.registry", "list"], repo).stdout
    assert re.search(r"v0\.0\.5.*prod", out), out
    for version in ("v0.0.2", "v0.0.4", "v0.0.5"):
        assert lineage(repo, version)["promotion"]["promote"] is True
    last = lineage(repo, "v0.0.5")
    assert len(last["continual"]["test_sets"]) == 4  # the naive run's data version rejoins with the next one's
    assert min(last["continual"]["test_sets"].values()) > 0.7
    assert last["preprocessing"]["buffer"]["sha256"] == last["continual"]["buffer_sha256"]  # in the lineage


def test_the_ui_shows_which_versions_passed_and_why(loop):
    url, _, ids = loop
    artifacts = {a["key"]: a for a in api(url, "/artifacts/filter",
                                          {"artifacts": {"flow_run_id": {"any_": [ids[-1]]}}})}
    rows = json.loads(artifacts["continual-versions"]["data"])
    assert [r["promoted"] for r in rows] == [True, True, False, True, True]
    assert "points below" in rows[2]["reason"]
    assert "Accuracy matrix" in artifacts["continual"]["data"] and "data:image/png" in artifacts["continual"]["data"]


def test_no_test_row_is_in_the_buffer(loop):
    _, repo, _ = loop
    rows = pq.read_table(repo / "data/clean/rows.parquet")
    held_out = set(rows.filter(pc.not_equal(rows["split"], 0))["row"].to_pylist())
    buffer = pq.read_table(repo / "data/buffer/buffer.parquet")
    assert buffer.num_rows == 300 and not held_out & set(buffer["row"].to_pylist())
