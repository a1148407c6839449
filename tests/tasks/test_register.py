"""register: GTO versions on a commit holding the pipeline state; gated promotion."""

import json
import shutil
import subprocess

import gto.api
import pyarrow as pa
import pytest
import torch
from safetensors.torch import save_file

from tasks.data.tables import write_json, write_table
from tasks.errors import InputError
from tasks.files import RUN_FILE
from tasks.params import load_params
from tasks.register import register
from tests.conftest import GIT_ENV, ROOT


@pytest.fixture
def repo(tmp_path, monkeypatch):
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    for k, v in GIT_ENV.items():
        monkeypatch.setenv(k, v)
    subprocess.run(["git", "init", "-q", "-b", "main"], check=True)
    subprocess.run(["git", "add", "-A"], check=True)
    subprocess.run(["git", "commit", "-qm", "initial"], check=True)
    p = load_params()
    write_json(p.paths.checkpoints / "fp1" / RUN_FILE, {"deepspeed": {"zero_optimization": {"stage": 1}},
                                                          "world_size": 2})
    # what ingest, clean and train would leave: a data version that passed its contract, a transform, a history
    write_table(pa.table({"a": [1, 2, 3], "label": [0, 1, 0]}), p.paths.raw)
    write_json(p.paths.raw_manifest, {"version": "d1", "rows": 3, "schema": {"a": "int64", "label": "int64"}})
    write_json(p.paths.contract_report, {"ok": True, "version": "d1", "violations": []})
    write_json(p.paths.transform, {"numeric": [], "categorical": [], "classes": ["0", "1"]})
    write_json(p.paths.train_history, [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.6}])
    return p


def produce(p, accuracy, seed):
    """What train and evaluate would leave behind: a model and its metrics."""
    p.paths.model.parent.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.full((3,), float(seed))}, str(p.paths.model),
              metadata={"model": "mlp", "config": "{}", "fingerprint": "fp1", "run": "fp1"})
    write_json(p.paths.metrics, {"accuracy": accuracy, "f1_macro": accuracy})


def prod_version(name="digits"):
    return gto.api.find_versions_in_stage(".", name, "prod")[0].version


def test_promotes_only_a_better_model(repo):
    produce(repo, 0.90, seed=1)
    first = register(repo, flow_run_id="run-1")
    assert (first["version"], first["promotion"]["promote"]) == ("v0.0.1", True)
    assert prod_version() == "v0.0.1"

    produce(repo, 0.85, seed=2)
    worse = register(repo)
    assert worse["version"] == "v0.0.2" and not worse["promotion"]["promote"]
    assert "does not beat v0.0.1's 0.9000" in worse["promotion"]["reason"]
    assert prod_version() == "v0.0.1"
    recorded = json.loads(subprocess.run(["git", "show", f"digits@v0.0.2:{repo.paths.lineage}"],
                                         capture_output=True, text=True, check=True).stdout)
    assert recorded["promotion"]["reason"] == worse["promotion"]["reason"]

    produce(repo, 0.95, seed=3)
    assert register(repo)["promotion"]["promote"]
    assert prod_version() == "v0.0.3"


def test_version_points_at_a_commit_with_its_lineage(repo):
    produce(repo, 0.9, seed=1)
    rec = register(repo, flow_run_id="abc")
    tagged = subprocess.run(["git", "rev-parse", "digits@v0.0.1^{commit}"], capture_output=True, text=True).stdout
    assert tagged.strip() == rec["commit"]
    assert rec["prefect_flow_run_id"] == "abc"
    assert rec["metrics"]["accuracy"] == 0.9
    assert rec["deepspeed"]["zero_optimization"]["stage"] == 1
    assert rec["params"]["register"]["metric"] == "accuracy"


def test_undeclared_artifact_and_missing_metric_are_named(repo):
    produce(repo, 0.9, seed=1)
    bad = repo.model_copy(update={"register_": repo.register.model_copy(update={"name": "other", "metric": "auc"})})
    with pytest.raises(InputError) as err:
        register(bad)
    assert "'other' is not declared in dvc.yaml artifacts" in str(err.value)
    assert "register.metric 'auc' is not a number" in str(err.value)
    assert subprocess.run(["git", "tag"], capture_output=True, text=True).stdout == ""


def test_registers_on_a_machine_without_a_git_identity(repo, monkeypatch, tmp_path):
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "empty-home"))  # no ~/.gitconfig
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    produce(repo, 0.9, seed=1)
    assert register(repo)["version"] == "v0.0.1"
    assert prod_version() == "v0.0.1"


def test_other_staged_changes_stay_out_of_the_register_commit(repo):
    (repo.paths.model.parent.parent / "notes.txt").write_text("work in progress\n")
    subprocess.run(["git", "add", "notes.txt"], check=True)
    produce(repo, 0.9, seed=1)
    rec = register(repo)
    committed = subprocess.run(["git", "show", "--name-only", "--format=", rec["commit"]],
                               capture_output=True, text=True, check=True).stdout.split()
    assert "notes.txt" not in committed and "registry/lineage.json" in committed
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], capture_output=True, text=True).stdout
    assert staged.split() == ["notes.txt"]


def test_a_pickle_in_place_of_the_model_is_refused(repo):
    produce(repo, 0.9, seed=1)
    torch.save({"w": torch.zeros(3)}, repo.paths.model)  # torch.save under the safetensors name
    with pytest.raises(InputError, match=r"is a pickle \(torch.save\) file, not safetensors"):
        register(repo)
    assert subprocess.run(["git", "tag"], capture_output=True, text=True).stdout == ""


def test_lineage_records_preprocessing_contract_and_the_card(repo):
    produce(repo, 0.9, seed=1)
    rec = register(repo, flow_run_id="")
    assert rec["prefect_flow_run_id"] is None  # the flow passes "" outside a flow run
    assert rec["preprocessing"]["transform"]["path"] == str(repo.paths.transform)
    assert rec["preprocessing"]["tokenizer"] is None
    assert rec["contract"] == {"ok": True, "data_version": "d1", "reason": "reports/contract.json: no violations"}
    assert rec["input"] == {"kind": "table", "columns": [["a", "int64"], ["label", "int64"]], "rows": 3}
    committed = subprocess.run(["git", "show", "--name-only", "--format=", rec["commit"]], capture_output=True,
                               text=True, check=True).stdout.split()
    assert str(repo.paths.model_card) in committed
    card = repo.paths.model_card.read_text()
    assert "# Model card: digits v0.0.1" in card and "promoted (no version is in stage 'prod' yet)" in card
