"""Transfer learning end to end: digits 0-4 pretrained and registered, then 5-9 fine-tuned from it with a new
head and a frozen backbone, by `dvc repro`; prod moved, and the flow fine-tunes from the new holder, rerunning
the child's stages but not its ingest.

Slow (about 3 minutes on 2 cores): the real pipeline (DVC, DeepSpeed on 2 CPU ranks, GTO, Prefect).
"""

from __future__ import annotations

import hashlib
import json
import re
import sys

import pytest
from safetensors.torch import load_file

from tests.conftest import copy_repo, run, set_params

pytestmark = pytest.mark.slow
PARENT_METRICS: dict = {}  # the parent's test metrics, as its own evaluate wrote them
MODEL = "model/model.safetensors"
CHILD = {"ingest.labels": [5, 6, 7, 8, 9], "ingest.per_class": 10, "ingest.per_class_in": "train",
         "contract.min_rows": 50,
         "contract.min_class_rows": 10, "train.init.from": "digits@prod", "train.init.head": "reset",
         "train.init.freeze": "backbone", "train.epochs": 4, "train.batch_size": 8, "train.optimizer.lr": 0.01}


def sh(repo, *args):
    return run([sys.executable, "-m", *args], repo)


def lineage(repo, spec: str) -> dict:
    return json.loads(sh(repo, "tasks.registry", "--json", "lineage", spec).stdout)


def ran(out: str) -> list[str]:
    return re.findall(r"Running stage '(\w+)'", out)


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """digits v0.0.1, trained from scratch on classes 0-4: prod."""
    repo = copy_repo(tmp_path_factory.mktemp("transfer"), master_port=29870)
    set_params(repo, {"ingest.labels": [0, 1, 2, 3, 4], "train.epochs": 3, "augment.copies": 0})
    run(["git", "commit", "-qam", "the parent task: digits 0-4"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert "parent: none (train.init.from is null)" in out and "digits v0.0.1" in out and "promoted to prod" in out
    PARENT_METRICS.update(json.loads((repo / "reports/metrics.json").read_text()))
    return repo, (repo / MODEL).read_bytes()


@pytest.fixture(scope="module")
def child(parent):
    repo, weights = parent
    set_params(repo, CHILD)
    run(["git", "commit", "-qam", "the child task: 5-9, 20 labels each, from digits@prod"], repo)
    out = run(["dvc", "repro"], repo).stdout
    return repo, weights, out


def test_the_child_starts_from_the_parent_with_its_preprocessing_and_a_frozen_backbone(child):
    repo, weights, out = child
    assert "parent: digits@prod is digits v0.0.1" in out and "its preprocessing comes with it" in out
    assert (repo / "parent_model/model.safetensors").read_bytes() == weights  # the registered bytes, as fetched
    fetched = json.loads((repo / "parent_model/parent.json").read_text())
    assert fetched["version"] == "v0.0.1" and fetched["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    t = json.loads((repo / "data/clean/transform.json").read_text())
    theirs = json.loads((repo / "parent_model/transform.json").read_text())
    assert t["inherited"] and t["numeric"] == theirs["numeric"]  # the parent's scaling, not a new fit
    assert [str(c) for c in t["classes"]] == ["5", "6", "7", "8", "9"] and theirs["classes"] != t["classes"]
    assert t["leak_check"] == {"test_rows_in_parent_training": 0}
    split_rows = json.loads((repo / "reports/clean.json").read_text())["split_rows"]
    assert split_rows["train"] == 50 and split_rows["test"] > 100, split_rows  # 10 a class to learn from

    from models import split
    from tasks.weights import model_from_bytes

    module = model_from_bytes(weights, "parent")
    backbone, head = split(module)
    params = {n for n, _ in module.named_parameters()}
    before, after = load_file(repo / "parent_model/model.safetensors"), load_file(repo / MODEL)
    frozen = [k for k in backbone if k in params]
    assert frozen and all(before[k].equal(after[k]) for k in frozen)  # bit-identical after training
    assert after[head[-1]].shape[0] == 5 and not before[head[0]].equal(after[head[0]])  # a new head, trained


def test_the_lineage_chain_and_the_children_query(child):
    repo, weights, out = child
    assert "register: digits v0.0.2" in out
    info = lineage(repo, "digits@v0.0.2")
    assert info["derived_from"] == {"spec": "digits@prod", "artifact": "digits", "version": "v0.0.1",
                                    "commit": lineage(repo, "digits@v0.0.1")["commit"],
                                    "sha256": hashlib.sha256(weights).hexdigest()}
    assert [c["version"] for c in info["chain"]] == ["v0.0.2", "v0.0.1"]
    assert info["chain"][-1]["end"] == "trained from scratch"
    assert sh(repo, "tasks.registry", "children", "digits@v0.0.1").stdout.startswith("digits@v0.0.2 ")
    card = run(["git", "show", "digits@v0.0.2:registry/model_card.md"], repo).stdout
    assert "Fine-tuned from digits v0.0.1" in card


def test_a_repro_again_changes_nothing_and_a_moved_prod_retrains_on_the_new_data_schedule(child, prefect_server):
    from flows.pipeline import pipeline

    repo, _, _ = child
    lock = (repo / "dvc.lock").read_bytes()
    assert ran(run(["dvc", "repro"], repo).stdout) == ["parent"]  # prod unmoved: the same bytes, nothing below
    assert (repo / "dvc.lock").read_bytes() == lock
    run(["gto", "assign", "digits", "--version", "v0.0.2", "--stage", "prod"], repo)  # moved by hand
    summaries = pipeline(repo=str(repo), only_if_new_data=True)  # no new data, but a new parent: retrain
    status = {s: v["status"] for s, v in summaries.items()}
    assert status["ingest"] == "skipped" and all(status[s] == "ran" for s in ("parent", "clean", "train")), status
    assert json.loads((repo / "parent_model/parent.json").read_text())["version"] == "v0.0.2"
    assert lineage(repo, "digits@v0.0.3")["derived_from"]["version"] == "v0.0.2"
    assert [c["version"] for c in lineage(repo, "digits@v0.0.3")["chain"]] == ["v0.0.3", "v0.0.2", "v0.0.1"]


def test_zero_epochs_from_the_parent_on_its_own_task_reproduces_its_test_metrics(child):
    """The warm start is exact: the parent's weights, transform and test rows give the parent's figures."""
    repo, weights, _ = child
    set_params(repo, {"ingest.labels": [0, 1, 2, 3, 4], "ingest.per_class": None, "train.init.head": "keep",
                      "train.init.from": "digits@v0.0.1", "train.epochs": 0})
    out = run(["dvc", "repro", "evaluate"], repo).stdout
    assert "train: 0 epochs: the model is digits@v0.0.1's weights as loaded" in out
    assert json.loads((repo / "reports/metrics.json").read_text()) == PARENT_METRICS
    before, after = load_file(repo / "parent_model/model.safetensors"), load_file(repo / MODEL)
    assert before.keys() == after.keys() and all(before[k].equal(after[k]) for k in before)
    assert json.loads((repo / "reports/train_history.json").read_text()) == []
    summary = json.loads((repo / "reports/train/metrics.json").read_text())  # the loaded model, validated
    assert f"val_accuracy {summary['val_accuracy']:.4f}" in out and summary["val_accuracy"] > 0.9


def test_a_child_of_the_same_source_whose_test_rows_the_parent_trained_on_is_refused(child):
    repo, _, _ = child
    set_params(repo, {"ingest.labels": [0, 1, 2, 3, 4], "ingest.per_class": None, "train.init.head": "keep",
                      "train.init.from": "digits@v0.0.1",
                      "clean.split.seed": 7})  # another split: some of the parent's training rows become test rows
    res = run(["dvc", "repro", "clean"], repo, check=False)
    assert res.returncode != 0
    assert re.search(r"\d+ row\(s\) of the test split were in the parent's training split", res.stdout + res.stderr)
    set_params(repo, {"train.init.leak": "warn"})
    out = run(["dvc", "repro", "clean"], repo).stdout
    assert "clean: warning:" in out and "parent's training split" in out
