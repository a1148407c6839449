"""register: GTO versions on a commit holding the pipeline state; gated promotion; one model, one version.

Real git and GTO in a throwaway repo; the files train and evaluate would leave are written small here
(the stage on a real run: tests/e2e/test_registry.py).
"""

import json
import shutil
import subprocess
from pathlib import Path

import gto.api
import pyarrow as pa
import pytest
import torch

from tasks.data.tables import write_json, write_table
from tasks.errors import InputError
from tasks.files import RUN_FILE, split_path
from tasks.params import load_params
from tasks.register import register
from tasks.registry import decisions
from tasks.training.run import save_model_file
from tests.conftest import GIT_ENV, ROOT

DIGITS = "pkg:sklearn.datasets/data/digits.csv.gz"  # what register.card in params.yaml was written for


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
    write_json(p.paths.raw_manifest, {"version": "d1", "rows": 3, "label_column": "label",
                                      "schema": {"a": "int64", "label": "int64"},
                                      "profile": {"labels": {"0": 2, "1": 1}}})
    write_json(p.paths.contract_report, {"ok": True, "version": "d1", "violations": [], "source": DIGITS})
    write_json(p.paths.transform, {"numeric": [{"name": "a"}], "categorical": [], "classes": ["0", "1"],
                                   "task": "classification", "data_version": "d1"})
    write_json(p.paths.train_history, [{"epoch": 1, "train_loss": 0.5, "val_loss": 0.6}])
    for split in ("train", "val", "test"):
        write_table(pa.table({"a": [1.0, 2.0], "label": [0, 1]}), split_path(p.paths.splits, split))
    return p


def produce(p, accuracy, seed, root=Path("."), predicted=("0", "1", "1", "0")):
    """What train and evaluate would leave behind (under `root`): a model (written as train writes it),
    its metrics and its test pairs (actual 0, 1, 0, 1; `predicted` as given)."""
    save_model_file({"w": torch.full((3,), float(seed))}, root / p.paths.model,
                    {"model": "mlp", "config": "{}", "fingerprint": "fp1", "run": "fp1", "checkpoint": "step1"})
    write_json(root / p.paths.metrics, {"accuracy": accuracy, "f1_macro": accuracy, "test_rows": 4})
    write_json(root / p.paths.confusion, [{"actual": a, "predicted": b} for a, b in zip("0101", predicted)])


def tags() -> list[str]:
    return subprocess.run(["git", "tag", "-l"], capture_output=True, text=True, check=True).stdout.split()


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
    assert rec["input"] == {"kind": "table", "source": DIGITS, "columns": [["a", "int64"], ["label", "int64"]],
                            "rows": 3, "label_column": "label", "labels": {"0": 2, "1": 1}}
    assert rec["signature"] == {"task": "classification", "labels": ["0", "1"], "features": [["a", "number"]],
                                "image_shape": None}
    assert rec["test_split"] == {"rows": 4, "classes": ["0", "1"], "predicted": ["0", "1"]}
    committed = subprocess.run(["git", "show", "--name-only", "--format=", rec["commit"]], capture_output=True,
                               text=True, check=True).stdout.split()
    assert str(repo.paths.model_card) in committed
    card = repo.paths.model_card.read_text()
    assert "# Model card: digits v0.0.1" in card and "promoted (no version is in stage 'prod' yet)" in card


def other_data(p, classes=("benign", "malignant"), source="pkg:sklearn.datasets/data/breast_cancer.csv"):
    """What ingest and clean would leave for another data set: other labels, other columns, another source."""
    write_table(pa.table({"radius": [1.0, 2.0], "texture": [3.0, 4.0], "label": list(classes)}), p.paths.raw)
    write_json(p.paths.raw_manifest, {"version": "d2", "rows": 569, "label_column": "label",
                                      "profile": {"labels": {classes[0]: 357, classes[1]: 212}}})
    write_json(p.paths.contract_report, {"ok": True, "version": "d2", "violations": [], "source": source})
    write_json(p.paths.transform, {"numeric": [{"name": "radius"}, {"name": "texture"}], "categorical": [],
                                   "classes": list(classes), "task": "classification", "data_version": "d2"})


def ten_digits(p):
    """The first model's data: the digits' ten labels."""
    t = json.loads(p.paths.transform.read_text())
    write_json(p.paths.transform, t | {"classes": [str(d) for d in range(10)]})


def test_a_model_of_other_data_takes_no_stage_from_the_holder(repo):
    ten_digits(repo)
    produce(repo, 0.9881, seed=1)
    assert register(repo)["promotion"]["promote"]
    other_data(repo)
    produce(repo, 1.0, seed=2, predicted=("benign",) * 4)  # and a test split of one class, one class predicted
    write_json(repo.paths.confusion, [{"actual": "benign", "predicted": "benign"}] * 4)
    rec = register(repo)
    reason = rec["promotion"]["reason"]
    assert not rec["promotion"]["promote"] and prod_version() == "v0.0.1"
    assert "label set differs: holder digits@v0.0.1 has [0..9], candidate has ['benign', 'malignant']" in reason
    assert ("input schema differs: holder digits@v0.0.1 reads 1 column(s), candidate 2: the candidate lacks [a], "
            "adds [radius, texture]") in reason
    assert "its test split holds 1 class(es) ['benign']: a metric on one class means nothing" in reason
    assert "register it under a model name of its own (params.yaml `register: name: breast-cancer`" in reason
    assert "beats" not in reason
    assert [(d["action"], d["reason"]) for d in decisions(rec["commit"])] == [("register", reason)]  # recorded

    write_json(repo.paths.transform, json.loads(repo.paths.transform.read_text()) | {"task": "regression"})
    produce(repo, 1.0, seed=3)
    assert "task differs: holder digits@v0.0.1 is a classification, candidate a regression" in \
        register(repo)["promotion"]["reason"]


def test_no_stage_on_a_one_class_test_split_or_for_one_class_predicted(repo):
    produce(repo, 0.5, seed=1, predicted=("1",) * 4)
    rec = register(repo)  # no holder yet: still refused
    assert not rec["promotion"]["promote"]
    assert rec["promotion"]["reason"] == "it predicts '1' for every one of its 4 test rows"
    assert gto.api.find_versions_in_stage(".", "digits", "prod") is None
    produce(repo, 1.0, seed=2)
    write_json(repo.paths.confusion, [{"actual": "0", "predicted": "0"}] * 3)
    assert register(repo)["promotion"]["reason"].startswith("its test split holds 1 class(es) ['0']")
    produce(repo, 0.75, seed=3)
    assert register(repo)["promotion"]["promote"] and prod_version() == "v0.0.3"


def test_another_data_set_registers_under_a_name_of_its_own(repo):
    produce(repo, 0.9, seed=1)
    register(repo)
    other_data(repo)
    produce(repo, 0.95, seed=2)
    own = repo.model_copy(update={"register_": repo.register.model_copy(update={"name": "breast-cancer"})})
    with pytest.raises(InputError) as err:
        register(own)
    said = str(err.value)
    assert "register.name 'breast-cancer' is not declared in dvc.yaml artifacts (declared: digits)" in said
    assert tags() == ["digits#prod#1", "digits@v0.0.1"]
    snippet = said.split("add under `artifacts:` in dvc.yaml\n", 1)[1]
    dvc_yaml = Path("dvc.yaml").read_text()
    Path("dvc.yaml").write_text(dvc_yaml.replace("\nartifacts:\n", "\nartifacts:\n" + snippet, 1))  # as told

    rec = register(own)
    assert (rec["artifact"], rec["version"], rec["promotion"]["promote"]) == ("breast-cancer", "v0.0.1", True)
    assert prod_version("breast-cancer") == "v0.0.1" and prod_version("digits") == "v0.0.1"
    assert sorted(tags()) == ["breast-cancer#prod#1", "breast-cancer@v0.0.1", "digits#prod#1", "digits@v0.0.1"]
    from dvc.repo import Repo

    assert Repo(".", uninitialized=True).artifacts.get_path("breast-cancer") == str(repo.paths.model)


def test_the_same_model_twice_is_one_version_whatever_the_source_is_named(repo, capsys):
    from tasks.register import main

    produce(repo, 0.9, seed=1)
    first = register(repo)
    lineage, card = repo.paths.lineage.read_bytes(), repo.paths.model_card.read_bytes()
    # the source renamed (ingest names it in the contract report), and a new drift report
    write_json(repo.paths.contract_report, {"ok": True, "version": "d1", "violations": [],
                                            "source": "data/sources/renamed.csv.gz",
                                            "drift": {"against": "d0", "exceeded": ["label shift 0.2"]}})
    repo.paths.lineage.unlink()  # as DVC leaves it before the stage runs
    again = register(repo)
    assert again["same_as"] == "digits@v0.0.1" and again["commit"] == first["commit"]
    assert tags() == ["digits#prod#1", "digits@v0.0.1"]
    assert repo.paths.lineage.read_bytes() == lineage and repo.paths.model_card.read_bytes() == card
    with _no_exit():
        main()
    assert ("register: same as digits@v0.0.1: weights, preprocessing and data unchanged; no new version"
            in capsys.readouterr().out)
    assert tags() == ["digits#prod#1", "digits@v0.0.1"]

    write_table(pa.table({"a": [1.0, 5.0], "label": [0, 1]}), split_path(repo.paths.splits, "test"))
    assert register(repo)["version"] == "v0.0.2"  # other test data: another version of the same weights
    produce(repo, 0.9, seed=7)
    assert register(repo)["version"] == "v0.0.3"  # other weights


class _no_exit:
    """main() returns normally (exit status 0) for a model already registered."""

    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        assert kind is None, value
        return False


def failing_commits():
    hook = Path(".git/hooks/pre-commit")
    hook.write_text("#!/bin/sh\necho 'refused by a hook' >&2\nexit 1\n")
    hook.chmod(0o755)
    return hook


def test_a_failed_register_leaves_the_last_lineage_and_card(repo):
    produce(repo, 0.9, seed=1)
    register(repo)
    lineage, card = repo.paths.lineage.read_bytes(), repo.paths.model_card.read_bytes()
    produce(repo, 0.95, seed=2)
    hook = failing_commits()
    with pytest.raises(InputError, match="refused by a hook"):
        register(repo)
    assert repo.paths.lineage.read_bytes() == lineage and repo.paths.model_card.read_bytes() == card
    assert tags() == ["digits#prod#1", "digits@v0.0.1"]

    repo.paths.lineage.unlink()  # DVC removes a stage's outputs before it runs: the committed ones come back
    repo.paths.model_card.unlink()
    with pytest.raises(InputError, match="refused by a hook"):
        register(repo)
    assert repo.paths.lineage.read_bytes() == lineage and repo.paths.model_card.read_bytes() == card
    hook.unlink()
    write_json(repo.paths.transform, json.loads(repo.paths.transform.read_text()) | {"data_version": "d0"})
    with pytest.raises(InputError, match=r"manifest.json is data version d1, but .*transform.json was fitted on d0"):
        register(repo)
    assert repo.paths.lineage.read_bytes() == lineage


def test_the_card_describes_the_data_trained_on_not_the_digits(repo):
    other_data(repo, source="data/sources/breast_cancer.csv")
    produce(repo, 0.9, seed=1, predicted=("benign", "malignant", "benign", "malignant"))
    write_json(repo.paths.confusion, [{"actual": a, "predicted": a} for a in ("benign", "malignant") * 2])
    register(repo)
    card = repo.paths.model_card.read_text()
    assert "- source: `data/sources/breast_cancer.csv` (table), data version `d2`: 569 rows, 3 columns" in card
    assert "label `label` (classification), 2 classes ['benign', 'malignant']: benign (357 rows), malignant" in card
    assert "handwritten" not in card and "8x8" not in card
    assert f"register.card was written for `{DIGITS}`, this version was trained on" in card
