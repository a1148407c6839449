"""The registry end to end on one trained repo: lineage both ways, load and predict, a fresh clone after
`dvc pull`, tampered and pickled weights refused, the same model once (a renamed source, a second
training from scratch), a better model promoted, a worse one refused, rollback, and another data set
refused the digits' stage and registered under a name of its own.

Slow (about 3.5 minutes on 2 cores): the real pipeline (`dvc repro`, DeepSpeed on 2 CPU ranks, GTO) trains a small
MLP for the whole module; tests run in file order on that repo.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tasks.data.sources import resolve_local
from tasks.data.tables import LABEL, SPLIT
from tests.conftest import copy_repo, run, set_params

pytestmark = pytest.mark.slow
SOURCE = "pkg:sklearn.datasets/data/digits.csv.gz"  # the default source: raw input for predict
MODEL = "model/model.safetensors"


class _Payload:
    """Unpickling this touches a file: the proof that something ran pickle on it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (type(self.marker).touch, (self.marker,))


def sh(repo, *args, check=True):
    return run([sys.executable, "-m", *args], repo, check=check)


def lineage_at(repo, ref) -> dict:
    return json.loads(run(["git", "show", f"{ref}:registry/lineage.json"], repo).stdout)


def prod(repo) -> str:
    return json.loads(sh(repo, "tasks.registry", "--json", "lineage", "digits@prod").stdout)["version"]


def cache_file(repo, md5: str):
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """v0.0.1: a deliberately weak model (one epoch at a tenth of the learning rate), in prod; the policy
    also asks for reproducibility (the evaluation rerun at registration)."""
    repo = copy_repo(tmp_path_factory.mktemp("registry"), master_port=29810)
    set_params(repo, {"train.model": "mlp", "train.epochs": 1, "train.optimizer.lr": 0.0003,
                      "register.require_reproducible": True})
    run(["git", "commit", "-qam", "a small model"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert "register: digits v0.0.1" in out and "promoted to prod" in out
    raw = tmp_path_factory.mktemp("input") / "digits.csv.gz"
    shutil.copy(resolve_local(SOURCE), raw)
    return repo, raw


def test_lineage_gives_the_data_hashes_in_the_versions_dvc_lock_and_back(trained):
    repo, _ = trained
    info = json.loads(sh(repo, "tasks.registry", "lineage", "digits@prod").stdout)
    lock = yaml.safe_load(run(["git", "show", "digits@v0.0.1:dvc.lock"], repo).stdout)["stages"]
    assert info["version"] == "v0.0.1"
    assert info["commit"] == run(["git", "rev-parse", "digits@v0.0.1^{commit}"], repo).stdout.strip()
    for stage in ("ingest", "clean", "augment", "train"):
        assert info["data"][stage] == {o["path"]: o["md5"] for o in lock[stage]["outs"]}
    assert info["code_commit"] == run(["git", "rev-parse", f"{info['commit']}^"], repo).stdout.strip()
    assert info["world_size"] == 2 and info["deepspeed"]["zero_optimization"]["stage"] == 0
    assert info["params"]["train"]["optimizer"]["lr"] == 0.0003
    assert info["contract"]["ok"] and info["promotion"]["promote"]
    assert info["reproducible"]["ok"] and "evaluation rerun gives accuracy" in info["reproducible"]["reason"]
    committed = json.loads(run(["git", "show", "digits@v0.0.1:reports/metrics.json"], repo).stdout)
    assert info["metrics"]["accuracy"] == committed["accuracy"]

    raw_md5 = {o["path"]: o["md5"] for o in lock["ingest"]["outs"]}["data/raw/table.parquet"]
    for query in (raw_md5, raw_md5[:8], info["data_version"]):  # whole md5, prefix, the ingest data version
        assert sh(repo, "tasks.registry", "trained-on", query).stdout.startswith("digits@v0.0.1 ")
    assert "no registered version was trained on 00000000" in sh(repo, "tasks.registry", "trained-on",
                                                                  "00000000").stdout
    card = run(["git", "show", "digits@v0.0.1:registry/model_card.md"], repo).stdout
    for part in ("# Model card: digits v0.0.1", "## Intended use", "Per class:", "## Training setup", "## Limits",
                 raw_md5):
        assert part in card


def test_load_model_applies_the_saved_preprocessing(trained, tmp_path):
    from tasks.loading import load_model

    repo, raw = trained
    m = load_model("digits@prod", repo=repo)
    assert str(m.version) == "digits@v0.0.1"
    report = json.loads((repo / "reports/clean.json").read_text())
    assert report["duplicates_dropped"] == report["unlabeled_dropped"] == 0  # clean rows = raw rows, in order
    with pa.memory_map(str(repo / "data/clean/table.arrow")) as f:
        clean = pa.ipc.open_file(f).read_all()
    names = [c for c in clean.column_names if c not in (LABEL, SPLIT)]
    expected = np.column_stack([clean[c].to_numpy() for c in names]).astype(np.float32)
    table = pacsv.read_csv(raw, read_options=pacsv.ReadOptions(column_names=[f"x{i}" for i in range(64)] + ["label"]))
    assert np.allclose(m.preprocessing.features(table), expected, atol=1e-6)

    sh(repo, "tasks.predict", "digits@prod", str(raw), "-o", str(tmp_path / "p.parquet"), "--batch-rows", "500")
    out = pq.read_table(tmp_path / "p.parquet")
    assert out.num_rows == len(expected) and pq.ParquetFile(tmp_path / "p.parquet").num_row_groups == 4
    with torch.no_grad():
        direct = m.module(torch.from_numpy(expected)).argmax(1).numpy().astype(str)
    assert out["prediction"].to_pylist() == direct.tolist()


def test_a_fresh_clone_predicts_the_same_after_dvc_pull(trained, tmp_path):
    repo, raw = trained
    run(["dvc", "remote", "add", "--local", "-d", "store", str(tmp_path / "remote")], repo)
    run(["dvc", "push"], repo)
    sh(repo, "tasks.predict", "digits@prod", str(raw), "-o", str(tmp_path / "here.parquet"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(repo), str(clone)], tmp_path)
    before = sh(clone, "tasks.predict", "digits@v0.0.1", str(raw), "-o", str(tmp_path / "x.parquet"), check=False)
    assert before.returncode == 2 and "is neither in the DVC cache nor in a reachable remote" in before.stderr
    run(["dvc", "remote", "add", "--local", "-d", "store", str(tmp_path / "remote")], clone)
    run(["dvc", "pull"], clone)
    sh(clone, "tasks.predict", "digits@prod", str(raw), "-o", str(tmp_path / "there.parquet"))
    assert pq.read_table(tmp_path / "there.parquet").equals(pq.read_table(tmp_path / "here.parquet"))


def test_tampered_or_pickled_weights_are_refused(trained, tmp_path):
    repo, raw = trained
    md5 = {o["path"]: o["md5"] for o in yaml.safe_load((repo / "dvc.lock").read_text())["stages"]["train"]["outs"]}
    cached = cache_file(repo, md5[MODEL])
    good = cached.read_bytes()
    tampered = bytearray(good)
    tampered[-3] ^= 0x55  # one weight's byte: still valid safetensors
    marker = tmp_path / "unpickled"
    torch.save({"w": torch.zeros(3), "x": _Payload(marker)}, tmp_path / "pickle.safetensors")
    try:
        for bad, said in ((bytes(tampered), "the file was changed, so it is not loaded"),
                          ((tmp_path / "pickle.safetensors").read_bytes(), "(and it is now a pickle)")):
            cached.chmod(0o644)
            cached.write_bytes(bad)
            res = sh(repo, "tasks.predict", "digits@prod", str(raw), "-o", str(tmp_path / "p.parquet"), check=False)
            assert res.returncode == 2 and "differs from the" in res.stderr and said in res.stderr, res.stderr
            assert not (tmp_path / "p.parquet").exists()
    finally:
        cached.write_bytes(good)
    model = repo / MODEL
    shutil.copy(tmp_path / "pickle.safetensors", model)  # a pickle renamed to look like the model
    try:
        res = sh(repo, "tasks.register", check=False)
        assert res.returncode == 2 and "is a pickle (torch.save) file, not safetensors" in res.stderr
    finally:
        model.write_bytes(good)
    assert not marker.exists()
    assert run(["git", "tag", "-l", "digits@*"], repo).stdout.split() == ["digits@v0.0.1"]


def tags(repo) -> list[str]:
    return sorted(run(["git", "tag", "-l"], repo).stdout.split())


def test_a_renamed_source_registers_no_new_version(trained):
    repo, _ = trained
    before = tags(repo)
    shutil.copy(resolve_local(SOURCE), repo / "data/sources/handwritten.csv.gz")  # the same data, renamed
    set_params(repo, {"ingest.source": "data/sources/handwritten.csv.gz"})
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "the digits under another name"], repo)
    out = run(["dvc", "repro"], repo).stdout  # ingest, clean and register rerun; exit 0
    assert "register: same as digits@v0.0.1: weights, preprocessing and data unchanged; no new version" in out
    assert "Running stage 'train'" not in out
    assert tags(repo) == before
    assert (repo / "registry/lineage.json").read_text() == run(["git", "show", "digits@v0.0.1:registry/lineage.json"],
                                                               repo).stdout


def test_training_again_from_scratch_writes_the_same_file(trained):
    repo, _ = trained
    registered = lineage_at(repo, "digits@v0.0.1")["model"]["sha256"]
    assert hashlib.sha256((repo / MODEL).read_bytes()).hexdigest() == registered
    shutil.rmtree(repo / "checkpoints")
    (repo / MODEL).unlink()
    out = run([sys.executable, "-m", "tasks.train"], repo, timeout=600).stdout
    assert "train: epoch 1/1" in out  # trained afresh, not resumed
    assert hashlib.sha256((repo / MODEL).read_bytes()).hexdigest() == registered


def test_better_is_promoted_worse_is_refused_and_rollback_restores_the_previous(trained, tmp_path):
    from tasks.loading import load_model

    repo, _ = trained
    set_params(repo, {"train.epochs": 2, "train.optimizer.lr": 0.003})  # a proper training run
    run(["git", "commit", "-qam", "train properly"], repo)
    assert "register: digits v0.0.2" in run(["dvc", "repro"], repo).stdout
    assert prod(repo) == "v0.0.2"

    # a worse model: the same weights with noise (what a bad run would leave), evaluated and registered by DVC
    state, path = load_file(str(repo / MODEL)), repo / MODEL
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    gen = torch.Generator().manual_seed(0)
    noisy = {k: v + 0.5 * v.std() * torch.randn(v.shape, generator=gen) if "weight" in k else v
             for k, v in state.items()}
    save_file(noisy, str(path), metadata=meta)
    run(["dvc", "commit", "-f", "train"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert "register: digits v0.0.3" in out and "not promoted to prod" in out
    reason = lineage_at(repo, "digits@v0.0.3")["promotion"]["reason"]
    assert "does not beat v0.0.2's" in reason
    refused = sh(repo, "tasks.registry", "promote", "digits@v0.0.3", check=False)
    assert refused.returncode == 1 and "not promoted to prod" in refused.stdout
    shown = json.loads(sh(repo, "tasks.registry", "--json", "show", "digits@v0.0.3").stdout)
    assert [(d["action"], d["promote"]) for d in shown["decisions"]] == [("register", False), ("promote", False)]
    assert all("does not beat v0.0.2's" in d["reason"] for d in shown["decisions"])  # both refusals recorded
    assert prod(repo) == "v0.0.2"

    assert "digits v0.0.1: now in prod" in sh(repo, "tasks.registry", "rollback", "digits").stdout
    assert prod(repo) == "v0.0.1"
    run(["dvc", "artifacts", "get", ".", "digits", "--stage", "prod", "-o", str(tmp_path / "got.safetensors")], repo)
    first = lineage_at(repo, "digits@v0.0.1")["model"]["sha256"]
    assert hashlib.sha256((tmp_path / "got.safetensors").read_bytes()).hexdigest() == first
    m = load_model("digits@prod", repo=repo)
    assert str(m.version) == "digits@v0.0.1" and m.lineage["model"]["sha256"] == first
    v1 = load_file(str(tmp_path / "got.safetensors"))
    assert all(torch.equal(m.module.state_dict()[k], v1[k]) for k in v1)


def test_another_data_set_takes_no_stage_from_the_digits_and_registers_under_its_own_name(trained):
    """The breast-cancer table (string labels, 30 named columns) after the digits: refused the digits' prod,
    then registered under a name of its own by params and the dvc.yaml entry the error gives."""
    from sklearn.datasets import load_breast_cancer

    repo, _ = trained
    frame = load_breast_cancer(as_frame=True).frame
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    frame.to_csv(repo / "data/sources/breast_cancer.csv", index=False)
    set_params(repo, {"ingest.source": "data/sources/breast_cancer.csv", "ingest.header": True,
                      "ingest.label_column": "target", "ingest.image_shape": None, "clean.per_column": True,
                      "contract.columns": {"target": {"type": "category", "allowed": ["benign", "malignant"]}}})
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "breast cancer"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert "register: digits v0.0.4" in out and "not promoted to prod" in out
    reason = lineage_at(repo, "digits@v0.0.4")["promotion"]["reason"]
    assert "label set differs: holder digits@v0.0.1 has [0..9], candidate has ['benign', 'malignant']" in reason
    assert "input schema differs: holder digits@v0.0.1 reads 64 column(s), candidate 30" in reason
    assert "register: name: breast-cancer" in reason
    assert prod(repo) == "v0.0.1"
    card = run(["git", "show", "digits@v0.0.4:registry/model_card.md"], repo).stdout
    assert "- source: `data/sources/breast_cancer.csv` (table)" in card and "569 rows, 31 columns" in card
    assert "benign (357 rows), malignant (212 rows)" in card and "handwritten" not in card

    set_params(repo, {"register.name": "breast-cancer"})
    failed = run(["dvc", "repro"], repo, check=False)
    assert failed.returncode != 0 and "add under `artifacts:` in dvc.yaml" in failed.stderr + failed.stdout
    said = (failed.stderr + failed.stdout).split("add under `artifacts:` in dvc.yaml\n", 1)[1]
    entry = "".join(line + "\n" for line in said.splitlines()[:3])  # the three lines of the entry
    dvc_yaml = (repo / "dvc.yaml").read_text()
    (repo / "dvc.yaml").write_text(dvc_yaml.replace("\nartifacts:\n", "\nartifacts:\n" + entry, 1))
    run(["git", "commit", "-qam", "a model of its own"], repo)
    out = run(["dvc", "repro"], repo).stdout
    assert "register: breast-cancer v0.0.1" in out and "promoted to prod: no version is in stage 'prod' yet" in out
    own = json.loads(sh(repo, "tasks.registry", "--json", "lineage", "breast-cancer@prod").stdout)
    assert own["version"] == "v0.0.1" and own["signature"]["labels"] == ["benign", "malignant"]
    assert prod(repo) == "v0.0.1"  # the digits' holder untouched
