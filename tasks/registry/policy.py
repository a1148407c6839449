"""The promotion policy, and the moves it gates: promote, rollback, and the decisions they leave.

    from tasks.registry.policy import decide, promote, rollback, decisions
    decide(params.register, "prod", candidate_lineage, ("v0.0.2", its_lineage))   # {"promote": bool, "reason"}
    promote("digits@v0.0.3", repo=repo)      # checked against register's policy in params.yaml
    rollback("digits", "prod", repo=repo)    # the version that held prod before the current one

The policy is `register:` in params.yaml: `metric` (which way it points: tasks.metrics, or
`higher_is_better` when set), `min_improvement` over the holder of the stage (over the holder's figure
on the candidate's own test split when the candidate is its warm-started child, which evaluate
records: like with like), `require_contract` and
`require_reproducible`, and the forgetting gate `max_forgetting`: a version that loses more than
that many points of accuracy on any past data version's test set against the holder is refused,
the test set named (tasks/continual/metrics.py). Whatever params say, a version takes a stage only
from a holder of the same task, label set and input schema (tasks.registry.compare: a model of other
data belongs under a name of its own, `register.name`), and a classifier only when its test metrics
mean something: at least two classes in its test split, and not one class predicted for every test
row. Every decision, refusals
included, is appended as a JSON line to the version commit's git note (`git notes --ref=registry show
<commit>`).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

from tasks.continual.metrics import forgetting_refusals
from tasks.errors import InputError
from tasks.metrics import improvement
from tasks.params import Register, load_params
from tasks.registry.compare import meaningless, unlike
from tasks.registry.git import append_note, author, read_note, registry_lock
from tasks.registry.versions import NAME, ROLLBACK, STAGE, move_stage, read_lineage, resolve, stage_holder, stage_stack

NOTES_REF = "registry"  # refs/notes/registry: the decisions about each version


def decisions(commit: str, repo: str | Path = ".") -> list[dict]:
    text = read_note(commit, NOTES_REF, repo)
    try:
        return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]
    except json.JSONDecodeError as e:
        raise InputError(f"the registry note of {commit[:8]} (git notes --ref={NOTES_REF}) has a line that is "
                         f"not JSON ({e}); fix it with `git notes --ref={NOTES_REF} edit {commit[:8]}`") from None


def record_decision(commit: str, decision: dict, repo: str | Path = ".") -> None:
    """Append a decision to the version commit's note (under the registry lock)."""
    entry = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "by": author(repo)[0], **decision}
    append_note(commit, json.dumps(entry, sort_keys=True), NOTES_REF, repo)


def _refusals(policy: Register, candidate: dict) -> list[str]:
    """What keeps `candidate` (a lineage record) from any stage, whatever holds it."""
    refusals = []
    contract = candidate.get("contract") or {}
    if policy.require_contract and not contract.get("ok"):
        refusals.append(f"data version {contract.get('data_version')} has not passed the data contract "
                        f"({contract.get('reason', 'no contract record')})")
    repro = candidate.get("reproducible") or {}
    if policy.require_reproducible and not repro.get("ok"):
        refusals.append(f"not shown reproducible ({repro.get('reason', 'not checked at registration')})")
    if not isinstance((candidate.get("metrics") or {}).get(policy.metric), (int, float)):
        refusals.append(f"register.metric {policy.metric!r} is not among its metrics")
    return refusals + meaningless(candidate)


def test_sets(record: dict) -> dict[str, float]:
    """A lineage's accuracy on each data version's test set (register records it from reports/continual)."""
    return dict((record.get("continual") or {}).get("test_sets") or {})


def forgetting(policy: Register, candidate: dict, holder: dict, holder_name: str) -> list[str]:
    """The forgetting gate (register.max_forgetting): the holder's test sets on which the candidate loses
    more than the allowed points, or was not scored. A holder registered before test sets were recorded
    has none to lose."""
    if policy.max_forgetting is None or not test_sets(holder):
        return []
    refusals = forgetting_refusals(test_sets(candidate), test_sets(holder), policy.max_forgetting, holder_name)
    if any("was not scored" in r for r in refusals):
        refusals.append("a version is scored on the test sets of the data versions its parent lineage has seen: "
                        "train it from the stage (train.init.from: NAME@STAGE) so its data carries them")
    return refusals


def own_name_hint(candidate: dict) -> str:
    """How to register a model of other data beside the one in the stage, not over it."""
    source = ((candidate.get("input") or {}).get("source") or "").rstrip("/").split("/")[-1]
    stem = re.sub(r"[^a-z0-9]+", "-", source.split(".")[0].lower()).strip("-")
    name = stem if stem and stem != candidate.get("artifact") else "NEW-NAME"
    return (f"a model of other data takes no stage from this one: register it under a model name of its own "
            f"(params.yaml `register: name: {name}`, and that name declared in dvc.yaml's `artifacts:`)")


def decide(policy: Register, stage: str, candidate: dict, current: tuple[str, dict] | None) -> dict:
    """The promotion policy: may `candidate` (a lineage record) take `stage` from `current`?"""
    metric, refusals = policy.metric, _refusals(policy, candidate)
    differs = unlike(current[1], candidate, f"{current[1].get('artifact', '?')}@{current[0]}") if current else []
    if refusals or differs:
        hint = [own_name_hint(candidate)] if differs else []
        return {"promote": False, "stage": stage, "reason": "; ".join(differs + refusals + hint),
                **({"current": current[0]} if current else {})}
    if current is None:
        return {"promote": True, "stage": stage, "reason": f"no version is in stage {stage!r} yet"}
    version, record = current
    forgot = forgetting(policy, candidate, record, f"{record.get('artifact', '?')}@{version}")
    if forgot:
        return {"promote": False, "stage": stage, "current": version, "reason": "; ".join(forgot),
                "forgetting": True}
    value, old = candidate["metrics"][metric], (record.get("metrics") or {}).get(metric)
    same = (candidate.get("continual") or {}).get("parent_on_this_test_split") or {}
    on = ""
    if same.get("version") == version and isinstance((same.get("metrics") or {}).get(metric), (int, float)):
        old, on = same["metrics"][metric], " on this test split"  # like with like: its parent on the same rows
    if not isinstance(old, (int, float)):
        return {"promote": False, "stage": stage, "current": version,
                "reason": f"{metric} of {version} in {stage} cannot be read from its lineage"}
    gain = improvement(value, old, metric, policy.higher_is_better)
    verdict = gain > 0 and gain >= policy.min_improvement
    word = "beats" if verdict else "does not beat"
    return {"promote": bool(verdict), "stage": stage, "current": version, "current_value": old,
            "reason": f"{metric} {value:.4f} {word} {version}'s {old:.4f}{on} by the required "
                      f"{policy.min_improvement}"}


def promote(spec: str, stage: str | None = None, repo: str | Path = ".") -> dict:
    """Move a stage to a registered version if register's policy (params.yaml) allows; record either way."""
    policy = load_params(Path(repo) / "params.yaml").register
    stage = stage or policy.stage
    if not STAGE.match(stage):
        raise InputError(f"stage {stage!r}: expected lower case letters, digits and dashes")
    with registry_lock(repo):
        v = resolve(spec, repo)
        held = stage_holder(v.name, stage, repo)
        if held and held.version == v.version:
            raise InputError(f"{v} is already in stage {stage!r}")
        current = (held.version, read_lineage(held, repo)) if held else None
        decision = decide(policy, stage, read_lineage(v, repo), current)
        record_decision(v.commit, {"action": "promote", "version": v.version, **decision}, repo)
        if decision["promote"]:
            move_stage(v.name, stage, v.version, f"{stage}: {decision['reason']}", repo)
    return {"artifact": v.name, "version": v.version, **decision}


def rollback(name: str, stage: str = "prod", repo: str | Path = ".") -> dict:
    """Put back the version that held `stage` before the current one."""
    if not re.fullmatch(NAME, name or "") or not STAGE.match(stage):
        raise InputError(f"rollback {name!r} {stage!r}: expected an artifact name and a stage (e.g. digits prod)")
    with registry_lock(repo):
        current = stage_holder(name, stage, repo)
        if current is None:
            raise InputError(f"{name}: no version is in stage {stage!r}, so there is nothing to roll back")
        earlier = [v for v in stage_stack(name, stage, repo) if v != current.version]
        if not earlier:
            raise InputError(f"{name}: {current.version} is the first version to hold stage {stage!r}; "
                             f"there is no earlier one to roll back to")
        back = resolve(f"{name}@{earlier[-1]}", repo)
        reason = f"{ROLLBACK}: {stage} back to {back.version} from {current.version}"
        move_stage(name, stage, back.version, reason, repo)
        for v, action in ((back, "rollback-to"), (current, "rolled-back")):
            record_decision(v.commit, {"action": action, "version": v.version, "stage": stage, "promote": v is back,
                                       "reason": reason}, repo)
    return {"artifact": name, "stage": stage, "version": back.version, "previous": current.version,
            "reason": reason}
