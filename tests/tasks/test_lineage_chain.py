"""Lineage from parent to child: register records `derived_from`, `lineage` walks the chain back to the first
model trained from scratch, `children` lists a version's fine-tunes, and the model card names the parent.

Real GTO tags in a throwaway git repo (the fixture of tests/tasks/test_register.py); parent.json is written
as the parent stage (tasks/parent.py) writes it for a warm start.
"""

import importlib
import json
import subprocess

import pytest

from tasks import registry
from tasks.data.tables import write_json
from tasks.errors import InputError
from tasks.register import register
from tests.tasks.test_register import produce, repo  # noqa: F401  (the fixture)

FILE = "weights/base.safetensors"
FILE_SHA = "ab" * 32


def derive(p, spec: str) -> dict:
    """parent.json for a warm start from `spec`, a registered version (resolved as the parent stage does)
    or a plain safetensors file; returns the derived_from the child's lineage must record."""
    if spec.endswith(".safetensors"):
        write_json(p.paths.parent / "parent.json", {"from": spec, "artifact": None, "version": None,
                                                    "commit": None, "weights": {"path": spec, "sha256": FILE_SHA},
                                                    "model": "mlp"})
        return {"spec": spec, "artifact": None, "version": None, "commit": None, "sha256": FILE_SHA}
    v = registry.resolve(spec)
    weights = registry.read_lineage(v)["model"]
    write_json(p.paths.parent / "parent.json", {"from": spec, "artifact": v.name, "version": v.version,
                                                "commit": v.commit, "weights": weights, "model": "mlp"})
    return {"spec": spec, "artifact": v.name, "version": v.version, "commit": v.commit, "sha256": weights["sha256"]}


def scratch(p) -> None:
    write_json(p.paths.parent / "parent.json", {"from": None})


@pytest.fixture
def family(repo):  # noqa: F811
    """v0.0.1 from scratch (prod); v0.0.2 and v0.0.3 fine-tuned from it (as digits@v0.0.1 and as digits@prod);
    v0.0.4 fine-tuned from v0.0.2. Returns {version: its registration}."""
    produce(repo, 0.90, seed=1)  # no parent.json at all: a project from before the parent stage
    made = {"v0.0.1": register(repo)}
    for seed, spec in ((2, "digits@v0.0.1"), (3, "digits@prod"), (4, "digits@v0.0.2")):
        expected = derive(repo, spec)
        produce(repo, 0.80 + seed / 100, seed=seed)  # worse than the parent: prod stays v0.0.1
        rec = register(repo)
        assert rec["derived_from"] == expected
        made[rec["version"]] = rec
    assert registry.stage_holder("digits", "prod").version == "v0.0.1"
    return made


def link(rec: dict, spec: str | None, end: str | None = None) -> dict:
    entry = {"artifact": "digits", "version": rec["version"], "commit": rec["commit"],
             "sha256": rec["model"]["sha256"], "spec": spec}
    return entry | ({"end": end} if end else {})


def test_the_chain_runs_back_to_the_first_model_trained_from_scratch(family, capsys):
    assert family["v0.0.1"]["derived_from"] is None  # no parent.json: from scratch
    assert family["v0.0.3"]["derived_from"]["version"] == "v0.0.1"  # digits@prod, recorded as the version it was
    info = registry.lineage("digits@v0.0.4")
    assert info["derived_from"]["commit"] == family["v0.0.2"]["commit"]
    assert info["chain"] == [link(family["v0.0.4"], "digits@v0.0.2"), link(family["v0.0.2"], "digits@v0.0.1"),
                             link(family["v0.0.1"], None, "trained from scratch")]
    assert registry.lineage("digits@prod")["chain"] == [link(family["v0.0.1"], None, "trained from scratch")]
    registry.main(["lineage", "digits@v0.0.3"])  # the command prints it (JSON)
    printed = json.loads(capsys.readouterr().out)
    assert [(e["version"], e["spec"]) for e in printed["chain"]] == [("v0.0.3", "digits@prod"), ("v0.0.1", None)]


def test_children_are_the_versions_derived_from_that_commit_and_weights(family, capsys):
    assert [c["version"] for c in registry.children("digits@v0.0.1")] == ["v0.0.3", "v0.0.2"]
    assert [c["version"] for c in registry.children("digits@prod")] == ["v0.0.3", "v0.0.2"]  # prod is v0.0.1
    assert [(c["version"], c["spec"]) for c in registry.children("digits@v0.0.2")] == [("v0.0.4", "digits@v0.0.2")]
    assert registry.children("digits@v0.0.4") == []

    registry.main(["children", "digits@v0.0.1"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"digits@v0.0.3  {family['v0.0.3']['commit'][:8]}  ")
    assert lines[0].endswith("derived with digits@prod") and lines[1].endswith("derived with digits@v0.0.1")
    registry.main(["--json", "children", "digits@v0.0.1"])
    listed = json.loads(capsys.readouterr().out)
    assert [(c["artifact"], c["version"], c["commit"]) for c in listed] == [
        ("digits", v, family[v]["commit"]) for v in ("v0.0.3", "v0.0.2")]
    registry.main(["children", "digits@v0.0.4"])
    assert capsys.readouterr().out == "no registered version was fine-tuned from digits@v0.0.4\n"


def test_other_weights_at_the_parents_commit_are_not_its_child(family, repo):  # noqa: F811
    """The link is the commit and the weights' sha256 together: a record naming v0.0.1's commit with other
    weights is nobody's child, and its chain ends there."""
    derive(repo, "digits@v0.0.1")
    record = json.loads((repo.paths.parent / "parent.json").read_text())
    write_json(repo.paths.parent / "parent.json", record | {"weights": {"path": "x", "sha256": "0" * 64}})
    produce(repo, 0.8, seed=5)
    assert register(repo)["version"] == "v0.0.5"
    assert [c["version"] for c in registry.children("digits@v0.0.1")] == ["v0.0.3", "v0.0.2"]
    chain = registry.lineage("digits@v0.0.5")["chain"]
    assert [e["version"] for e in chain] == ["v0.0.5", "v0.0.1"]
    assert chain[-1]["end"] == (f"does not resolve: digits@v0.0.1's weights sha256 "
                                f"{family['v0.0.1']['model']['sha256'][:12]} is not the recorded 000000000000")


def test_the_model_card_and_show_name_the_parent(family, capsys):
    card = lambda v: subprocess.run(["git", "show", f"digits@{v}:registry/model_card.md"],  # noqa: E731
                                    check=True, capture_output=True, text=True).stdout
    parent = family["v0.0.1"]
    named = f"commit {parent['commit'][:8]}, weights sha256 {parent['model']['sha256'][:8]}…)."
    assert "\nTrained from scratch.\n" in card("v0.0.1")
    assert f"\nFine-tuned from digits v0.0.1 ({named}\n" in card("v0.0.2")
    assert f"\nFine-tuned from digits v0.0.1 (train.init.from `digits@prod`; {named}\n" in card("v0.0.3")
    assert "Fine-tuned from digits v0.0.2 (commit " in card("v0.0.4")
    assert "Trained from scratch" not in card("v0.0.2")
    registry.main(["show", "digits@v0.0.3"])
    assert f"\n  Fine-tuned from digits v0.0.1 (train.init.from `digits@prod`; {named}\n" in capsys.readouterr().out


def test_a_plain_file_parent_ends_the_chain_with_that_file(repo):  # noqa: F811
    expected = derive(repo, FILE)
    produce(repo, 0.9, seed=1)
    rec = register(repo)
    assert rec["derived_from"] == expected
    assert registry.lineage("digits@v0.0.1")["chain"] == [
        link(rec, FILE), {"file": FILE, "sha256": FILE_SHA,
                          "end": "a plain weights file: what made it is not in the registry"}]
    assert f"\nFine-tuned from the weights file `{FILE}` (weights sha256 abababab…).\n" in \
        repo.paths.model_card.read_text()


def test_a_parent_that_no_longer_resolves_ends_the_chain(family):
    subprocess.run(["git", "tag", "-d", "digits@v0.0.2"], check=True, capture_output=True)
    chain = registry.lineage("digits@v0.0.4")["chain"]
    assert [e.get("version") for e in chain] == ["v0.0.4", "v0.0.2"]
    assert chain[-1]["commit"] == family["v0.0.2"]["commit"]
    assert chain[-1]["end"].startswith("does not resolve: ") and "v0.0.2" in chain[-1]["end"]


def test_a_cycle_ends_the_chain(family, monkeypatch):
    """Commits make a real cycle impossible; a forged lineage (v0.0.1 claiming v0.0.4 as its parent) must
    still end the walk rather than loop."""
    read = registry.read_lineage
    four = family["v0.0.4"]

    def forged(v, where="."):
        rec = read(v, where)
        if v.version == "v0.0.1":
            return rec | {"derived_from": {"spec": "digits@v0.0.4", "artifact": "digits", "version": "v0.0.4",
                                           "commit": four["commit"], "sha256": four["model"]["sha256"]}}
        return rec

    monkeypatch.setattr(importlib.import_module("tasks.registry.lineage"), "read_lineage", forged)  # the module:
    # the package's `lineage` is the function
    chain = registry.lineage("digits@v0.0.4")["chain"]
    assert [e["version"] for e in chain] == ["v0.0.4", "v0.0.2", "v0.0.1", "v0.0.4"]
    assert chain[-1]["end"] == f"cycle: digits@v0.0.4 at {four['commit'][:8]} is already in the chain"


def test_an_experiment_records_its_parent_too(repo, monkeypatch):  # noqa: F811
    produce(repo, 0.9, seed=1)
    register(repo)
    expected = derive(repo, "digits@prod")
    produce(repo, 0.95, seed=2)
    monkeypatch.setenv("DVC_EXP_NAME", "exp-7")
    rec = register(repo)
    assert rec["experiment"] == "exp-7" and rec["derived_from"] == expected
    assert json.loads(repo.paths.lineage.read_text())["derived_from"] == expected
    assert "Fine-tuned from digits v0.0.1 (train.init.from `digits@prod`; commit" in \
        repo.paths.model_card.read_text()


def test_a_broken_parent_record_is_named(repo):  # noqa: F811
    produce(repo, 0.9, seed=1)
    scratch(repo)
    assert register(repo)["derived_from"] is None  # {"from": null}: from scratch
    (repo.paths.parent / "parent.json").write_text("{not json")
    produce(repo, 0.9, seed=2)
    with pytest.raises(InputError, match=r"parent_model/parent.json: not JSON .*run `dvc repro parent`"):
        register(repo)
    write_json(repo.paths.parent / "parent.json", {"from": "digits@prod", "artifact": "digits"})
    with pytest.raises(InputError, match=r"the parent 'digits@prod' has no weights sha256 and no commit"):
        register(repo)
