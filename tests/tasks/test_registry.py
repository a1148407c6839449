"""registry: specs, policy-gated promotion, rollback, decisions, lineage queries; concurrent registrations.

Real GTO tags in a throwaway git repo; the weights are tiny safetensors files (the stage around them is
tested end to end in tests/e2e/test_registry.py).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import gto.api
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tasks import registry
from tasks.data.tables import write_json
from tasks.errors import InputError
from tasks.params import Register
from tasks.register import register
from tests.conftest import ROOT
from tests.tasks.test_register import produce, repo  # noqa: F401  (the fixture)

TWO_CLASSES = {"rows": 4, "classes": ["0", "1"], "predicted": ["0", "1"]}  # a test split metrics mean something on


def holder(stage="prod"):
    return registry.stage_holder("digits", stage).version


def dvc_stage_rev(stage="prod"):
    """What `dvc artifacts get --stage` resolves the stage to (DVC's own reading of the GTO tags)."""
    from dvc.repo import Repo

    rev = Repo(".", uninitialized=True).artifacts.get_rev("digits", stage=stage)
    return subprocess.run(["git", "rev-parse", rev], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("spec", ["digits", "digits@", "Digits@prod", "digits@v1.2", "digits@prod@x", "@v0.0.1"])
def test_bad_specs_are_named(spec):
    with pytest.raises(InputError, match="expected NAME@VERSION"):
        registry.parse_spec(spec)


@pytest.mark.parametrize("metric, declared, better", [
    ("rmse", None, 0.5),         # the name says error: lower is better
    ("r2", None, 0.9),           # any other metric: higher is better
    ("rmse", False, 0.5),        # declared as the name says
    ("score", False, 0.5),       # a metric of the user's own, declared lower-is-better
])
def test_the_policy_reads_which_way_the_metric_points(metric, declared, better):
    policy = Register(metric=metric).model_copy(update={"higher_is_better": declared})  # None: from the name
    held = ("v0.0.1", {"metrics": {metric: 0.7}})
    worse = 0.9 if better == 0.5 else 0.5
    for value, promoted in ((better, True), (worse, False), (0.7, False)):
        candidate = {"contract": {"ok": True}, "metrics": {metric: value}, "test_split": TWO_CLASSES}
        decision = registry.decide(policy, "prod", candidate, held)
        assert decision["promote"] is promoted, (value, decision)
        assert ("does not beat" not in decision["reason"]) is promoted


def test_unknown_version_stage_and_artifact_are_named(repo):  # noqa: F811
    produce(repo, 0.9, seed=1)
    register(repo)
    with pytest.raises(InputError, match=r"digits has no version v0.0.7 \(versions: v0.0.1\)"):
        registry.resolve("digits@v0.0.7")
    with pytest.raises(InputError, match=r"no version of digits is in stage 'staging' \(stages in use: prod\)"):
        registry.resolve("digits@staging")
    with pytest.raises(InputError, match="no version of 'cats' is registered"):
        registry.resolve("cats@prod")
    assert registry.resolve("digits@latest") == registry.resolve("digits@prod")


def test_promote_refuses_a_worse_version_and_rollback_restores_the_previous(repo):  # noqa: F811
    for acc, seed in ((0.90, 1), (0.95, 2), (0.85, 3)):
        produce(repo, acc, seed)
        register(repo)
    assert holder() == "v0.0.2"  # v0.0.3 was worse: not promoted at registration

    with pytest.raises(SystemExit) as refused:  # and not by hand either: the same policy
        registry.main(["promote", "digits@v0.0.3"])
    assert refused.value.code == 1
    assert holder() == "v0.0.2"
    notes = registry.decisions(registry.resolve("digits@v0.0.3").commit)
    assert [(n["action"], n["promote"]) for n in notes] == [("register", False), ("promote", False)]
    assert "accuracy 0.8500 does not beat v0.0.2's 0.9500" in notes[-1]["reason"]

    out = registry.rollback("digits", "prod")
    assert (out["version"], out["previous"]) == ("v0.0.1", "v0.0.2")
    assert holder() == "v0.0.1"  # GTO's reading ...
    assert dvc_stage_rev() == registry.resolve("digits@v0.0.1").commit  # ... and DVC's agree
    with pytest.raises(InputError, match="v0.0.1 is the first version to hold stage 'prod'"):
        registry.rollback("digits", "prod")

    assert registry.promote("digits@v0.0.2")["promote"]  # better than v0.0.1 again
    assert holder() == "v0.0.2" and dvc_stage_rev() == registry.resolve("digits@v0.0.2").commit
    assert registry.rollback("digits", "prod")["version"] == "v0.0.1"
    with pytest.raises(InputError, match="already in stage 'prod'"):
        registry.promote("digits@v0.0.1")
    # one version holds the stage at a time
    active = [v for v in registry.versions("digits") if "prod" in v["stages"]]
    assert [v["version"] for v in active] == ["v0.0.1"]


def tag_times() -> dict[str, int]:
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname:strip=2) %(taggerdate:unix)", "refs/tags"],
                         capture_output=True, text=True, check=True).stdout
    return {tag: int(t) for tag, t in (line.split() for line in out.splitlines())}


def in_one_second(*moves) -> list[str]:
    """Run `moves` (each makes stage tags; each can be run again) until the last two tags they make fall in
    one second, as a `gto assign` right after a promotion or two promotions at once can: a tag's time has
    one-second resolution. The new tags, in the order made."""
    for _ in range(5):
        while time.time() % 1 > 0.1:  # early in a second: the moves have the rest of it
            time.sleep(0.01)
        before = tag_times()
        for move in moves:
            move()
        times = tag_times()
        made = sorted(set(times) - set(before), key=lambda t: int(t.rsplit("#", 1)[1]))
        if times[made[-1]] == times[made[-2]]:
            return made
    pytest.fail("five tries made no two stage tags in one second")


def by_hand(version, unassign=False):
    """`gto assign digits --version VERSION --stage prod --force` (or `gto unassign`), as the CLI calls it."""
    if unassign:
        return lambda: gto.api.unassign(".", "digits", stage="prod", version=version, message=f"{version} out by hand")
    return lambda: gto.api.assign(".", "digits", "prod", version=version, force=True, message=f"{version} by hand")


def in_prod() -> list[str]:
    return [v["version"] for v in registry.versions("digits") if "prod" in v["stages"]]


def test_the_latest_assignment_holds_the_stage_when_tags_share_a_second(repo):  # noqa: F811
    for acc, seed in ((0.90, 1), (0.95, 2), (0.97, 3)):
        produce(repo, acc, seed)
        register(repo)
    assert holder() == "v0.0.3" and in_prod() == ["v0.0.3"]

    # promoted (the project's move), then v0.0.2 put back by hand in the same second: v0.0.3 stays assigned
    made = in_one_second(lambda: registry.move_stage("digits", "prod", "v0.0.3", "prod: again"), by_hand("v0.0.2"))
    assert tag_times()[made[-1]] == tag_times()[made[-2]]
    assert holder() == "v0.0.2" and in_prod() == ["v0.0.2"]  # GTO's `which` said v0.0.3, the highest version
    assert registry.resolve("digits@prod").version == "v0.0.2"
    assert registry.stage_stack("digits", "prod")[-2:] == ["v0.0.3", "v0.0.2"]

    # two assignments in one second: the later one holds, whichever version is higher
    in_one_second(by_hand("v0.0.2"), by_hand("v0.0.3"))
    assert holder() == "v0.0.3" and in_prod() == ["v0.0.3"]  # GTO's `show` took the lower version in a tie
    in_one_second(by_hand("v0.0.3"), by_hand("v0.0.2"))
    assert holder() == "v0.0.2" and in_prod() == ["v0.0.2"]

    # out and back in within one second: still in (GTO took the unassignment as the later)
    in_one_second(by_hand("v0.0.2", unassign=True), by_hand("v0.0.2"))
    assert holder() == "v0.0.2" and in_prod() == ["v0.0.2"]

    # the registry's own moves read the same: rollback puts back the holder before, alone in the stage
    out = registry.rollback("digits", "prod")
    assert (out["version"], out["previous"]) == ("v0.0.3", "v0.0.2")
    assert holder() == "v0.0.3" and in_prod() == ["v0.0.3"]
    assert [v.version for v in registry.stage_holders("digits").get("prod", [])] == ["v0.0.3"]
    assert dvc_stage_rev() == registry.resolve("digits@v0.0.3").commit


def test_a_data_version_that_failed_its_contract_is_not_promoted(repo):  # noqa: F811
    produce(repo, 0.90, seed=1)
    register(repo)
    produce(repo, 0.99, seed=2)
    write_json(repo.paths.contract_report, {"ok": False, "version": "d1", "violations": [{"check": "range"}]})
    rec = register(repo)
    assert not rec["promotion"]["promote"]
    assert "data version d1 has not passed the data contract (reports/contract.json: 1 violation(s))" \
        in rec["promotion"]["reason"]
    assert holder() == "v0.0.1"
    write_json(repo.paths.contract_report, {"ok": True, "version": "d0", "violations": []})  # another version's
    produce(repo, 0.99, seed=3)
    assert "is about data version d0, not d1" in register(repo)["promotion"]["reason"]


def test_lineage_and_trained_on_read_the_versions_dvc_lock(repo):  # noqa: F811
    def lock(md5):
        (repo.paths.model.parent.parent / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {
            "ingest": {"outs": [{"path": "data/raw/table.parquet", "md5": md5}]},
            "augment": {"outs": [{"path": "data/splits", "md5": "99887766554433221100aabbccddeeff.dir"}]}}}))

    lock("0123456789abcdef0123456789abcdef")
    produce(repo, 0.9, seed=1)
    register(repo)
    lock("fedcba9876543210fedcba9876543210")
    produce(repo, 0.8, seed=2)
    register(repo)
    info = registry.lineage("digits@prod")
    assert info["version"] == "v0.0.1"
    assert info["data"]["ingest"] == {"data/raw/table.parquet": "0123456789abcdef0123456789abcdef"}
    assert info["prefect_flow_run_id"] is None and info["model"]["sha256"]
    found = registry.trained_on("0123456789abcdef")
    assert [(v["version"], v["matches"]) for v in found] == [("v0.0.1", ["ingest: data/raw/table.parquet"])]
    assert [v["version"] for v in registry.trained_on("99887766554433221100aabbccddeeff.dir")] == ["v0.0.2",
                                                                                                  "v0.0.1"]
    assert registry.trained_on("abcabcabc") == []
    with pytest.raises(InputError, match="expected at least 6 hex digits"):
        registry.trained_on("data/raw")


def worktree(p, name: str, seed: int) -> Path:
    """Another checkout of the repo (git worktree: the same tags, notes and registry lock) holding the
    pipeline's outputs, with a model of its own."""
    root = Path(f"../{name}").resolve()
    subprocess.run(["git", "worktree", "add", "-q", "-b", name, str(root)], check=True)
    for part in ("data", "reports", "checkpoints", "model"):
        shutil.copytree(part, root / part, dirs_exist_ok=True)
    produce(p, 0.9, seed, root=root)
    return root


def test_four_registrations_at_once_get_a_version_each_and_the_same_model_once(repo):  # noqa: F811
    produce(repo, 0.9, seed=1)
    roots = [worktree(repo, f"w{i}", seed) for i, seed in enumerate((1, 2, 3, 1))]  # w3: w0's model again
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, "-m", "tasks.register"], cwd=root, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for root in roots]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outs
    tags = subprocess.run(["git", "tag", "-l"], capture_output=True, text=True).stdout.split()
    assert sorted(t for t in tags if t.startswith("digits@")) == [f"digits@v0.0.{i}" for i in range(1, 4)]
    assert [t for t in tags if t.startswith("digits#")] == ["digits#prod#1"]  # the first; the rest only tie
    printed = [out.split("\n")[0] for out, _ in outs]
    made = sorted(line.split()[2] for line in printed if line.startswith("register: digits v0.0."))
    assert made == ["v0.0.1", "v0.0.2", "v0.0.3"], printed
    (same,) = [line for line in printed if line.startswith("register: same as digits@")]
    twin = same.split()[3].rstrip(":")  # the version w0 or w3 made, whichever was first
    assert registry.read_lineage(registry.resolve(twin))["model"]["sha256"] == \
        json.loads((roots[0] / repo.paths.lineage).read_text())["model"]["sha256"]
    for i in range(1, 4):  # each version's commit holds its own lineage, and its decision is recorded
        v = registry.resolve(f"digits@v0.0.{i}")
        assert registry.read_lineage(v)["version"] == f"v0.0.{i}"
        assert [d["action"] for d in registry.decisions(v.commit)] == ["register"]
    assert len({registry.resolve(f"digits@v0.0.{i}").commit for i in range(1, 4)}) == 3
    assert holder() == "v0.0.1"


def test_cli_lists_and_shows_with_the_model_card(repo, capsys):  # noqa: F811
    produce(repo, 0.9, seed=1)
    register(repo, flow_run_id="run-7")
    registry.main(["list"])
    assert "digits@v0.0.1" in capsys.readouterr().out
    registry.main(["show", "digits@prod"])
    out = capsys.readouterr().out
    assert "digits v0.0.1 at" in out and "flow run run-7" in out
    assert "# Model card: digits v0.0.1" in out and "## Intended use" in out
    registry.main(["--json", "lineage", "digits@v0.0.1"])
    assert json.loads(capsys.readouterr().out)["version"] == "v0.0.1"
    with pytest.raises(SystemExit) as bad:
        registry.main(["show", "digits@nope!"])
    assert bad.value.code == 2
    assert "model spec 'digits@nope!'" in capsys.readouterr().err


def test_a_reproducibility_requirement_refuses_uncommitted_code(repo):  # noqa: F811
    produce(repo, 0.9, seed=1)
    register(repo)
    strict = repo.model_copy(update={"register_": repo.register.model_copy(update={"require_reproducible": True})})
    (repo.paths.model.parent.parent / "tasks").mkdir()
    (repo.paths.model.parent.parent / "tasks" / "patch.py").write_text("x = 1\n")
    produce(repo, 0.99, seed=2)
    rec = register(strict)
    assert not rec["promotion"]["promote"] and holder() == "v0.0.1"
    assert rec["promotion"]["reason"] == "not shown reproducible (uncommitted changes in tasks/)"


def test_a_repo_that_is_not_the_pipelines_checkout_is_named(tmp_path):
    with pytest.raises(InputError, match="--repo .*: no dvc.yaml there"):
        registry.versions("digits", tmp_path / "nowhere")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(InputError, match="--repo .*: not a git repository"):
        registry.artifact_names(tmp_path)


# --- the forgetting gate (register.max_forgetting): lineage dicts as register writes them -------------------


def lineage(accuracy: float, test_sets: dict | None) -> dict:
    rec = {"artifact": "digits", "contract": {"ok": True}, "metrics": {"accuracy": accuracy},
           "test_split": TWO_CLASSES}
    return rec | ({"continual": {"test_sets": test_sets, "strategy": "replay"}} if test_sets is not None else {})


HELD = ("v0.0.1", lineage(0.90, {"d0": 0.97, "d1": 0.95}))


def test_the_gate_refuses_a_version_that_forgets_more_than_allowed_naming_the_data_version_and_points():
    policy = Register(max_forgetting=5)
    candidate = lineage(0.99, {"d0": 0.90, "d1": 0.96, "d2": 0.40})  # better overall, 7 points lost on d0
    decision = registry.decide(policy, "prod", candidate, HELD)
    assert decision["promote"] is False and decision["forgetting"] is True and decision["current"] == "v0.0.1"
    assert decision["reason"] == ("accuracy on the test set of data version d0 0.9000 is 7.00 points below "
                                  "digits@v0.0.1's 0.9700, more than the allowed 5")  # d2 is new: not compared
    within = lineage(0.99, {"d0": 0.92, "d1": 0.90})  # 5 points exactly on both: allowed
    assert registry.decide(policy, "prod", within, HELD)["promote"] is True
    worse = lineage(0.80, {"d0": 0.97, "d1": 0.95})  # forgets nothing, and is refused by the metric alone
    decision = registry.decide(policy, "prod", worse, HELD)
    assert decision["promote"] is False and "does not beat" in decision["reason"] and "forgetting" not in decision


@settings(deadline=None, derandomize=True, max_examples=200)
@given(held=st.dictionaries(st.sampled_from(["d0", "d1", "d2", "d3"]), st.integers(0, 100), min_size=1),
       drops=st.lists(st.integers(-20, 30), min_size=4, max_size=4), allowed=st.integers(0, 25))
def test_the_gate_promotes_exactly_when_no_past_test_set_drops_more_than_allowed(held, drops, allowed):
    """Accuracies in whole points, so a drop is exact: refused on each test set that drops more, named."""
    holder = {v: a / 100 for v, a in held.items()}
    cand = {v: min(max(a - d, 0), 100) / 100 for (v, a), d in zip(held.items(), drops)}
    decision = registry.decide(Register(max_forgetting=allowed), "prod", lineage(1.0, cand),
                               ("v0.0.1", lineage(0.5, holder)))
    over = [v for v in held if held[v] - round(cand[v] * 100) > allowed]
    assert decision["promote"] is (not over)
    assert [v for v in held if f"data version {v} " in decision["reason"]] == (over or [])


def test_no_gate_without_max_forgetting_or_without_the_holders_test_sets():
    candidate = lineage(0.99, {"d0": 0.10, "d1": 0.10})
    assert registry.decide(Register(), "prod", candidate, HELD)["promote"] is True  # max_forgetting: null
    old = ("v0.0.1", lineage(0.90, None))  # registered before test sets were recorded: nothing to lose
    assert registry.decide(Register(max_forgetting=0), "prod", candidate, old)["promote"] is True
    assert registry.decide(Register(max_forgetting=0), "prod", candidate, None)["promote"] is True


def test_a_candidate_not_scored_on_a_holders_test_set_is_refused_with_the_way_to_fix_it():
    for candidate in (lineage(0.99, {"d1": 0.96}), lineage(0.99, None)):  # d0 missing; no record at all
        decision = registry.decide(Register(max_forgetting=5), "prod", candidate, HELD)
        assert decision["promote"] is False and decision["forgetting"] is True
        assert "the candidate was not scored on the test set of data version d0 (digits@v0.0.1 has 0.9700" in \
            decision["reason"]
        assert "train it from the stage (train.init.from: NAME@STAGE)" in decision["reason"]


def test_register_records_the_accuracy_on_each_data_versions_test_set(tmp_path):
    from tasks.continual import scoring
    from tasks.continual.scoring import continual_record
    from tasks.params import load_params

    p = load_params(ROOT / "params.yaml")
    p = p.model_copy(update={"paths": p.paths.model_copy(update={"continual": tmp_path / "c",
                                                                  "buffer": tmp_path / "b"})})
    assert continual_record(p) is None  # a run without the matrix
    rec = {"experiences": [{"experience": 0, "data_version": "d0", "accuracy": 0.5},
                           {"experience": 1, "data_version": None, "accuracy": 0.75}],
           "models": ["digits@v0.0.1", "this model"], "matrix": [[0.5, None], [0.5, 0.75]], "summary": {"x": 1}}
    write_json(tmp_path / "c" / "matrix.json", rec)
    assert continual_record(p) == {"test_sets": {"d0": 0.5, "1": 0.75}, "strategy": p.continual.strategy,
                                   "summary": {"x": 1}, "parent_on_this_test_split": None, "buffer_sha256": None}
    scoring.no_classes(tmp_path / "c")  # a regression: nothing to gate on
    assert continual_record(p) is None
