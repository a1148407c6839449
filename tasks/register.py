"""register: a new model version, DVC's way, with its lineage; gated promotion.

    python -m tasks.register          # what `dvc repro register` runs
    gto show digits                   # the registry: versions and stages

The model is the artifact declared in dvc.yaml's `artifacts:` section. This
stage writes the version's lineage (data hashes from dvc.lock, params, code
commit, DeepSpeed config, metrics, Prefect flow-run id), commits the
pipeline's state (dvc.lock, params, metrics, lineage) so the version points at
a commit whose dvc.lock holds this model, and tags it with GTO. The
`register.stage` (production) moves to the new version only when it beats
the current one on `register.metric` by at least `register.min_improvement`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
from pathlib import Path

import yaml
from safetensors import SafetensorError, safe_open

from tasks.errors import InputError, run_main
from tasks.params import Params, Register, load_params
from tasks.tables import read_json, sha256_file, write_json

FALLBACK_AUTHOR = ("dagtrain", "dagtrain@localhost")  # for machines with no git identity
DATA_STAGES = ("ingest", "clean", "augment", "train")


def git(*args: str, check: bool = True) -> str:
    res = subprocess.run(["git", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        raise InputError(f"git {' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout.strip()


def data_hashes(lock_path: Path = Path("dvc.lock")) -> dict:
    """{stage: {out path: md5}} for the data stages, as DVC recorded them."""
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else {}
    stages = (lock or {}).get("stages", {})
    return {s: {o["path"]: o.get("md5") for o in stages[s].get("outs", [])} for s in DATA_STAGES if s in stages}


def check_inputs(params: Register, model_path: Path, metrics: dict) -> dict:
    """The artifact is declared, the model is a safetensors file, the metric exists."""
    problems = []
    artifacts = (yaml.safe_load(Path("dvc.yaml").read_text()) or {}).get("artifacts", {})
    if params.name not in artifacts:
        problems.append(f"register.name {params.name!r} is not declared in dvc.yaml artifacts "
                        f"(declared: {', '.join(artifacts) or 'none'})")
    elif Path(artifacts[params.name]["path"]) != model_path:
        problems.append(f"dvc.yaml artifact {params.name!r} points at {artifacts[params.name]['path']}, "
                        f"not at the trained model {model_path}")
    try:
        with safe_open(str(model_path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        problems.append(f"{model_path}: not a readable safetensors file ({e})")
        meta = {}
    if not isinstance(metrics.get(params.metric), (int, float)):
        problems.append(f"register.metric {params.metric!r} is not a number in the metrics file")
    if git("rev-parse", "--is-inside-work-tree", check=False) != "true":
        problems.append("registering needs a git repository (versions are git tags)")
    if problems:
        raise InputError("register: " + "; ".join(problems))
    return meta


def promotion(params: Register, value: float, metrics_file: Path) -> dict:
    """Should the new version take `params.stage`? Compare with the version holding it."""
    import gto.api
    from gto.exceptions import ArtifactNotFound

    try:
        current = gto.api.find_versions_in_stage(".", params.name, params.stage)
    except ArtifactNotFound:  # nothing registered yet
        current = None
    current = current[0] if isinstance(current, list) and current else current
    if not current:
        return {"promote": True, "reason": f"no version is in stage {params.stage!r} yet"}
    shown = git("show", f"{current.commit_hexsha}:{metrics_file}", check=False)
    try:
        old = float(json.loads(shown)[params.metric])
    except (ValueError, KeyError, TypeError):
        return {"promote": False, "reason": f"{params.metric} of {current.version} in {params.stage} "
                                            f"cannot be read at {current.commit_hexsha[:8]}:{metrics_file}"}
    gain = (value - old) if params.higher_is_better else (old - value)
    verdict = gain > 0 and gain >= params.min_improvement
    word = "beats" if verdict else "does not beat"
    return {"promote": bool(verdict), "current": current.version, "current_value": old,
            "reason": f"{params.metric} {value:.4f} {word} {current.version}'s {old:.4f} "
                      f"by the required {params.min_improvement}"}


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


def commit_state(p: Params, message: str) -> str:
    """Commit what the version must point at: dvc.yaml/lock, params, small outputs."""
    paths = ["dvc.yaml", "dvc.lock", "params.yaml", p.paths.metrics, p.paths.lineage,
             p.paths.train_history, p.paths.confusion, p.paths.figures, p.paths.clean_report]
    # the .gitignore files DVC wrote for its outputs (never ones git itself ignores)
    paths += git("ls-files", "-mo", "--exclude-standard", "--", ":(glob)**/.gitignore").splitlines()
    paths = [str(x) for x in paths if Path(x).exists()]
    git("add", "--", *paths)
    if subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths]).returncode != 0:
        # only these paths: whatever else the user has staged stays staged, uncommitted
        name, email = author()
        git("-c", f"user.name={name}", "-c", f"user.email={email}", "commit", "-q", "-m", message, "--", *paths)
    return git("rev-parse", "HEAD")


def author() -> tuple[str, str]:
    """git's own identity if configured, else a fallback so unattended runs can commit and tag."""
    email = os.environ.get("GIT_AUTHOR_EMAIL") or git("config", "user.email", check=False)
    name = os.environ.get("GIT_AUTHOR_NAME") or git("config", "user.name", check=False)
    return (name, email) if name and email else FALLBACK_AUTHOR


def register(p: Params, flow_run_id: str | None = None) -> dict:
    import gto.api

    params = p.register
    metrics = read_json(p.paths.metrics, "evaluation metrics")
    meta = check_inputs(params, p.paths.model, metrics)
    value = float(metrics[params.metric])
    decision = promotion(params, value, p.paths.metrics)
    version = next_version(params.name)
    run = read_json(p.paths.checkpoints / meta.get("run", "") / "run.json", "training run record")
    dirty = [line[3:] for line in git("status", "--porcelain", "--", "tasks", "models", "flows").splitlines()]
    lineage = {
        "artifact": params.name, "version": version,
        "model": {"path": str(p.paths.model), "sha256": sha256_file(p.paths.model)},
        "data": data_hashes(), "params": p.model_dump(mode="json", by_alias=True),
        "code_commit": git("rev-parse", "HEAD", check=False) or None, "code_dirty": dirty,
        "deepspeed": run["deepspeed"], "world_size": run["world_size"],
        "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
        "prefect_flow_run_id": flow_run_id,
        "promotion": {"stage": params.stage, **decision},
        "registered_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(p.paths.lineage, lineage)
    commit = commit_state(p, f"Register {params.name} {version}: {params.metric} {value:.4f}")
    name, email = author()
    gto.api.register(".", params.name, commit, version=version, author=name, author_email=email,
                     message=f"{params.name} {version}: {params.metric}={value:.4f}")
    if decision["promote"]:
        gto.api.assign(".", params.name, params.stage, version=version, author=name, author_email=email,
                       message=f"{params.stage}: {decision['reason']}")
    return lineage | {"commit": commit}


def main() -> None:
    def body():
        p = load_params()
        r = register(p, os.environ.get("PREFECT__FLOW_RUN_ID"))
        moved = "promoted to" if r["promotion"]["promote"] else "not promoted to"
        print(f"register: {r['artifact']} {r['version']} at {r['commit'][:8]}; {moved} "
              f"{r['promotion']['stage']}: {r['promotion']['reason']}")

    run_main(body)


if __name__ == "__main__":
    main()
