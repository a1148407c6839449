"""register: a new model version, DVC's way, with its lineage and model card; policy-gated promotion.

    python -m tasks.register          # what `dvc repro register` runs
    python -m tasks.registry list     # the registry: versions and stages (see tasks/registry/)

The model is the artifact declared in dvc.yaml's `artifacts:` section. This
stage writes the version's lineage (data hashes from dvc.lock, the data
version and its contract result, params, code commit, DeepSpeed config,
metrics, Prefect flow-run id, the SHA-256 of the weights and of the saved
preprocessing: the fitted transform and, for text, the tokenizer, and the
parent it was fine-tuned from, `derived_from`, from paths.parent) and its
model card, commits the pipeline's state (dvc.lock, params, metrics, lineage,
card) so the version points at a commit whose dvc.lock holds this model and
its preprocessing, and tags it with GTO. The `register.stage` (production)
moves to the new version only when the promotion policy in params.yaml
allows (tasks.registry.policy.decide); the decision and its reason are in the
lineage and in the version's git note. Version allocation, commit and tags
run under the registry lock, so concurrent registrations get distinct versions.

One model is one version: a model whose identity (the sha256 of its weights,
its preprocessing and its splits; tasks/registry/compare.py) a version of the
same name already has adds no version and no tag: the stage says which version
it is and exits 0, leaving that version's lineage and card in the checkout.
Nothing is written before every check has passed: the lineage and the card are
rendered first, replace the old files atomically, and are put back as they
were (the last committed ones where DVC removed them) if the commit or the tag
fails.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tasks.continual.scoring import continual_record
from tasks.data.sources import IMAGE_SUFFIXES, is_remote, resolve_local
from tasks.data.tables import atomic_path, read_json, sha256_file, write_json
from tasks.errors import InputError, run_main
from tasks.files import BUFFER_TABLE, MATRIX_FILE, RUN_FILE, TOKENIZER_FILE, split_path
from tasks.params import Params, Register, load_params
from tasks.registry import Version, decide, move_stage, read_lineage, record_decision, stage_holder, version_paths
from tasks.registry.compare import identity, same_version, signature, test_split
from tasks.registry.dvc_files import DVC_YAML, LOCK, artifacts, data_hashes, read_lock
from tasks.registry.git import (
    EXPERIMENT_ENV,
    author,
    changed_gitignores,
    commit_paths,
    git,
    read_bytes_at,
    registry_lock,
    registry_repo,
)
from tasks.registry.lineage import derived_from
from tasks.registry.model_card import render
from tasks.weights import parse_weights

CODE = ("tasks", "models", "configs", "flows")  # uncommitted changes here make a run irreproducible


def check_inputs(params: Register, model_path: Path, metrics: dict) -> dict:
    """The artifact is declared, the model is a safetensors file (never a pickle), the metric exists."""
    problems, declared = [], artifacts()
    meta = {}
    try:
        _, meta = parse_weights(model_path.read_bytes(), str(model_path))
    except OSError as e:
        problems.append(f"{model_path}: cannot read the trained model ({e.strerror or e})")
    except InputError as e:
        problems.append(str(e))
    if not isinstance(metrics.get(params.metric), (int, float)):
        problems.append(f"register.metric {params.metric!r} is not a number in the metrics file")
    if git("rev-parse", "--is-inside-work-tree", check=False) != "true":
        problems.append("registering needs a git repository (versions are git tags)")
    if params.name in declared and Path(declared[params.name]["path"]) != model_path:
        problems.append(f"dvc.yaml artifact {params.name!r} points at {declared[params.name]['path']}, "
                        f"not at the trained model {model_path}")
    if params.name not in declared:  # last: the lines to add end the message
        problems.append(f"register.name {params.name!r} is not declared in dvc.yaml artifacts "
                        f"(declared: {', '.join(declared) or 'none'}); a model of its own needs an entry of its "
                        f"own: add under `artifacts:` in dvc.yaml\n{artifact_entry(params.name, model_path)}")
    if problems:
        raise InputError("register: " + "; ".join(problems))
    return meta


def artifact_entry(name: str, model_path: Path) -> str:
    """The dvc.yaml `artifacts:` entry that declares model `name` (what check_inputs asks for)."""
    return f"  {name}:\n    path: {Path(model_path).as_posix()}\n    type: model\n"


def next_version(name: str) -> str:
    import gto.api
    from gto.exceptions import ArtifactNotFound

    try:
        latest = gto.api.find_latest_version(".", name)
    except ArtifactNotFound:
        latest = None
    if not latest:
        return "v0.0.1"
    major, minor, patch = (int(v) for v in latest.version.lstrip("v").split("."))
    return f"v{major}.{minor}.{patch + 1}"


def input_kind(p: Params) -> str:
    """images when ingest read an image folder, else table: what predict must be given."""
    src = p.ingest.source
    if p.ingest.format == "images":
        return "images"
    if is_remote(src):
        return "table"
    path = resolve_local(src)
    return "images" if path.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in path.glob("*/*")) else "table"


def contract_status(p: Params, manifest: dict) -> dict:
    """Did the data version being registered pass the data contract?"""
    version, path = manifest.get("version"), p.paths.contract_report
    try:
        report = read_json(path, "data contract report")
    except InputError:
        return {"ok": False, "data_version": version, "reason": f"no contract report at {path}"}
    if report.get("version") != version:
        return {"ok": False, "data_version": version,
                "reason": f"{path} is about data version {report.get('version')}, not {version}"}
    bad = report.get("violations") or []
    return {"ok": bool(report.get("ok")) and not bad, "data_version": version,
            "reason": f"{path}: {len(bad)} violation(s)" if bad or not report.get("ok") else f"{path}: no violations"}


def reproducibility(p: Params, metrics: dict, dirty: list[str]) -> dict:
    """Committed code, and the evaluation rerun on these weights and this test split gives the metric back."""
    from tasks.evaluate import evaluate

    if dirty:
        return {"ok": False, "reason": f"uncommitted changes in {', '.join(dirty[:5])}"}
    metric = p.register.metric
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        again = evaluate(p.evaluate, p.paths.model, split_path(p.paths.splits, "test"), p.paths.transform,
                         p.paths.train_history, Path(tmp, "m.json"), Path(tmp, "c.json"), Path(tmp, "figures"))
    ok = abs(float(again[metric]) - float(metrics[metric])) <= 1e-9
    return {"ok": ok, "rerun": {metric: again[metric]},
            "reason": f"evaluation rerun gives {metric} {again[metric]:.6f}, recorded {metrics[metric]:.6f}"}


def raw_columns(raw: Path) -> list[list[str]]:
    """[name, Arrow type] of the snapshot's columns, in order: how predict reads raw input without a header."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return [[f.name, str(f.type)] for f in pq.read_schema(raw)]
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"register: {raw}: cannot read the raw snapshot's schema ({e}); run ingest") from None


def preprocessing_record(p: Params) -> dict:
    """The saved preprocessing's files and hashes: load_model reads them at the version's commit."""
    if not p.paths.transform.exists():
        raise InputError(f"register: {p.paths.transform}: the fitted transform is missing; run clean")
    tok = p.paths.splits / TOKENIZER_FILE
    return {"transform": {"path": str(p.paths.transform), "sha256": sha256_file(p.paths.transform)},
            "tokenizer": {"path": str(tok), "sha256": sha256_file(tok)} if tok.exists() else None,
            "rows": recorded_file(p.paths.rows),  # each row's hash, split and experience: a child's leak check
            "buffer": recorded_file(p.paths.buffer / BUFFER_TABLE),  # the replay buffer a child starts from
            "continual": recorded_file(p.paths.continual / MATRIX_FILE)}  # the matrix a child extends


def recorded_file(path: Path) -> dict | None:
    """A file's path and sha256 for the lineage; None when the run wrote none."""
    return {"path": str(path), "sha256": sha256_file(path)} if path.exists() else None


def lock_own_entry() -> None:
    """Under `dvc repro`, write this stage's own dvc.lock entry before the commit, with DVC's own code, as
    DVC writes it once the stage has exited: the version's commit then holds the whole dvc.lock, and the
    tree is clean after the run. Outside DVC (a Python caller, a test) there is no entry to write."""
    from dvc.repo import Repo

    name = os.environ.get("DVC_STAGE")
    if not name:
        return
    with Repo(".") as repo:
        (stage,) = repo.stage.collect(name)
        stage.save(run_cache=False)
        stage.dump(update_pipeline=False)


def commit_state(p: Params, message: str) -> str:
    """Commit what the version must point at: dvc.yaml/lock, params, small outputs (only these paths:
    whatever else the user has staged stays staged, uncommitted)."""
    paths = [DVC_YAML, LOCK, "params.yaml", p.paths.metrics, p.paths.per_class, p.paths.lineage, p.paths.model_card,
             p.paths.train_history, p.paths.train_live, p.paths.confusion, p.paths.figures, p.paths.clean_report,
             p.paths.contract_report, p.paths.continual]
    lock_own_entry()
    # the .gitignore files DVC wrote for its outputs (never ones git itself ignores)
    paths += changed_gitignores()
    paths = [str(x) for x in paths if Path(x).exists()]
    return commit_paths(".", message, paths) or git("rev-parse", "HEAD")


def trained_data(p: Params) -> tuple[dict, dict]:
    """The manifest and the fitted transform, checked to be of one data version (the one trained on)."""
    manifest = read_json(p.paths.raw_manifest, "ingest manifest")
    transform = read_json(p.paths.transform, "clean transform")
    fitted, snap = transform.get("data_version"), manifest.get("version")
    if fitted and snap and fitted != snap:
        raise InputError(f"register: {p.paths.raw_manifest} is data version {snap}, but {p.paths.transform} was "
                         f"fitted on {fitted}: the model was not trained on this data; run the pipeline "
                         f"(dvc repro) before registering")
    return manifest, transform


def trained_source(p: Params, manifest: dict) -> str:
    """Where the data version came from: the contract report of that version (ingest names the source
    there, not in the manifest, which holds only the data), else an older manifest, else params."""
    try:
        report = read_json(p.paths.contract_report, "data contract report")
    except InputError:
        report = {}
    if report.get("source") and report.get("version") == manifest.get("version"):
        return report["source"]
    return manifest.get("source") or p.ingest.source


def input_record(p: Params, manifest: dict) -> dict:
    """What the model was trained on, as ingest snapshotted it: the model card's data section."""
    return {"kind": input_kind(p), "source": trained_source(p, manifest), "columns": raw_columns(p.paths.raw),
            "rows": manifest.get("rows"), "label_column": manifest.get("label_column"),
            "labels": (manifest.get("profile") or {}).get("labels"),
            **({"selection": manifest["selection"]} if manifest.get("selection") else {})}  # a label budget


def record(p: Params, metrics: dict, meta: dict, flow_run_id: str | None) -> dict:
    """Everything the lineage says that does not depend on the registry's state."""
    manifest, transform = trained_data(p)
    run = read_json(p.paths.checkpoints / meta.get("run", "") / RUN_FILE, "training run record")
    dirty = [line[3:] for line in git("status", "--porcelain", "--", *CODE).splitlines()]
    pre = preprocessing_record(p)
    sig = signature(transform)
    rec = {
        "artifact": p.register.name,
        "model": {"path": str(p.paths.model), "sha256": sha256_file(p.paths.model)},
        "preprocessing": pre, "signature": sig,
        "identity": identity(p.paths.model, p.paths.transform, pre["tokenizer"] and Path(pre["tokenizer"]["path"]),
                             p.paths.splits),
        "test_split": test_split(read_json(p.paths.confusion, "evaluation confusion pairs"))
        if sig["task"] == "classification" else None,
        "input": input_record(p, manifest),
        "data": data_hashes(read_lock()), "data_version": manifest.get("version"),
        "contract": contract_status(p, manifest),
        "params": p.model_dump(mode="json", by_alias=True),
        "code_commit": git("rev-parse", "HEAD", check=False) or None, "code_dirty": dirty,
        "deepspeed": run["deepspeed"], "world_size": run["world_size"],
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "prefect_flow_run_id": flow_run_id or None,
        "derived_from": derived_from(p.paths.parent),  # the parent stage's parent.json; None from scratch
        "continual": continual_record(p),  # the accuracy on each data version's test set: the forgetting gate
    }
    if os.environ.get("DAGTRAIN_SEARCH"):  # the winner of a search (flows/hpo.py): its study, trial and sampler
        rec["search"] = json.loads(os.environ["DAGTRAIN_SEARCH"])
    if p.register.require_reproducible:
        rec["reproducible"] = reproducibility(p, metrics, dirty)
    return rec


@contextmanager
def restored_on_failure(paths: list[Path]) -> Iterator[Callable[[], None]]:
    """The files as they were if the block fails before it calls the `keep()` it is given: their old
    bytes, or the last committed ones where they are gone (DVC removes a stage's outputs before it runs),
    or no file."""
    old = {path: path.read_bytes() if path.exists() else read_bytes_at("HEAD", path) for path in paths}
    kept: list[bool] = []
    try:
        yield lambda: kept.append(True)
    except BaseException:
        if not kept:
            for path, data in old.items():
                write_bytes(path, data)
        raise


def write_bytes(path: Path, data: bytes | None) -> None:
    """`path` holds `data` (atomically), or no file for None."""
    if data is None:
        Path(path).unlink(missing_ok=True)
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def show_version(p: Params, v: Version) -> dict:
    """The checkout's lineage and card become those committed with version `v` (this very model)."""
    lineage, committed = read_lineage(v), version_paths(v.commit)
    for key, path in (("lineage", p.paths.lineage), ("model_card", p.paths.model_card)):
        write_bytes(path, read_bytes_at(v.commit, committed.get(key, path)))
    return lineage | {"commit": v.commit, "same_as": str(v)}


def experiment_only(p: Params, rec: dict, metrics: dict, history: list, decision: dict) -> dict:
    """Inside `dvc exp run`: the lineage and card the version would have, marked as the experiment's; no
    commit, tag or stage move (its commit lives only under refs/exps, on no branch)."""
    name = os.environ[EXPERIMENT_ENV]
    reason = (f"experiment {name} registers nothing; to register it: dvc exp apply {name}, git commit, then "
              f"dvc repro --force --single-item register (the policy would "
              f"{'promote' if decision['promote'] else 'not promote'} it: {decision['reason']})")
    lineage = rec | {"version": None, "experiment": name, "registered_at": None,
                     "promotion": decision | {"promote": False, "would_promote": decision["promote"],
                                              "reason": reason}}
    card = render(lineage | {"version": f"(experiment {name}, unregistered)"}, metrics, history, p.register.card)
    write_json(p.paths.lineage, lineage)
    write_bytes(p.paths.model_card, card.encode())
    return lineage | {"commit": None}


def register(p: Params, flow_run_id: str | None = None) -> dict:
    """A new version of register.name with its lineage and card, the stage moved if the policy allows; or,
    for a model already registered under that name, that version (`same_as`) and nothing new."""
    with restored_on_failure([p.paths.lineage, p.paths.model_card]) as keep:  # until tagged, a failure
        return _register(p, flow_run_id, keep)                                   # changes neither


def _register(p: Params, flow_run_id: str | None, keep: Callable[[], None]) -> dict:
    import gto.api

    from tasks.evaluate import read_metrics  # with the per-class table: the card's "Per class"

    params = p.register
    metrics = read_metrics(p.paths.metrics, p.paths.per_class)
    meta = check_inputs(params, p.paths.model, metrics)
    value = float(metrics[params.metric])
    rec = record(p, metrics, meta, flow_run_id)
    history = read_json(p.paths.train_history, "training history")
    experiment = os.environ.get(EXPERIMENT_ENV)
    registry = registry_repo()  # an experiment's temp or queue executor has no registry tags of its own
    with registry_lock():  # from reading the stage to the last tag: one registration at a time
        same = None if experiment else same_version(params.name, rec["identity"])
        if same:
            return show_version(p, same)
        held = stage_holder(params.name, params.stage, registry)
        decision = decide(params, params.stage, rec,
                          (held.version, read_lineage(held, registry)) if held else None)
        if experiment:
            return experiment_only(p, rec, metrics, history, decision)
        version = next_version(params.name)
        lineage = rec | {"version": version, "promotion": decision,
                         "registered_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        card = render(lineage, metrics, history, params.card)  # every check passed before anything is written
        write_json(p.paths.lineage, lineage)
        write_bytes(p.paths.model_card, card.encode())
        commit = commit_state(p, f"Register {params.name} {version}: {params.metric} {value:.4f}")
        name, email = author()
        gto.api.register(".", params.name, commit, version=version, author=name, author_email=email,
                         message=f"{params.name} {version}: {params.metric}={value:.4f}")
        keep()  # the version exists: its lineage and card stay, whatever fails next
        record_decision(commit, {"action": "register", "version": version, **decision})
        if decision["promote"]:
            move_stage(params.name, params.stage, version, f"{params.stage}: {decision['reason']}")
    return lineage | {"commit": commit}


def main() -> None:
    def body():
        p = load_params()
        r = register(p, os.environ.get("PREFECT__FLOW_RUN_ID"))
        if r.get("same_as"):
            print(f"register: same as {r['same_as']}: weights, preprocessing and data unchanged; no new version "
                  f"(its lineage and model card are in {p.paths.lineage} and {p.paths.model_card})")
            return
        if r.get("experiment"):
            print(f"register: {r['promotion']['reason']}")
            return
        moved = "promoted to" if r["promotion"]["promote"] else "not promoted to"
        print(f"register: {r['artifact']} {r['version']} at {r['commit'][:8]}; {moved} "
              f"{r['promotion']['stage']}: {r['promotion']['reason']}")

    run_main(body)


if __name__ == "__main__":
    main()
