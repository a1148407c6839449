"""The training pipeline as a Prefect flow: dvc.yaml's stages, driven through DVC.

    python -m flows.pipeline                    # one run, on the embedded Prefect server
    prefect deploy --all                        # the scheduled deployments (prefect.yaml)
    prefect worker start --pool training        # ...and a worker that runs them

Each stage of dvc.yaml is one Prefect task that runs `dvc repro --single-item
<stage>` (flows/stages.py), so DVC decides what is stale and writes dvc.lock
exactly as `dvc repro` does: a flow run after `dvc repro` executes nothing, and
a rerun after a failure starts at the failed stage. The run:

- holds its checkout's concurrency slot (one run per checkout at a time) and,
  while training, its share of the machine's `training-hardware` (flows/hardware.py);
- publishes its plan, the data report, training progress, metrics, figures and
  the model card as artifacts (flows/artifacts.py), and is renamed after the
  data version it trains on;
- with `branch`, `overrides` and `push`, leaves a trace: a commit of its
  dvc.lock, params and metrics on the branch, and its data, checkpoints and
  model on a DVC remote (flows/trace.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_client
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows import artifacts, hardware, plan, trace
from flows.stages import stage_task
from tasks.data.sources import is_remote
from tasks.params import Params
from tasks.registry.dvc_files import read_lock, stage_outs
from tasks.registry.git import commit_paths
from tasks.training.launch import world_size

STAGES = ("ingest", "parent", "clean", "buffer", "augment", "train", "evaluate", "register")
ingest, parent, clean, buffer, augment, train, evaluate, register = (stage_task(s) for s in STAGES)


def slot(name: str) -> contextlib.AbstractContextManager:
    """A Prefect global concurrency limit (made with limit 1 if missing; a limit a user set is kept):
    one holder at a time, the others wait."""
    return hardware.share(name, 1, size=1)


def checkout_slot(repo: Path) -> str:
    return "checkout-" + hashlib.sha1(str(repo.resolve()).encode()).hexdigest()[:12]


def name_after_data(repo: Path, p: Params) -> None:
    """Rename the flow run after the data version ingest left (the UI lists runs by it)."""
    manifest = repo / p.paths.raw_manifest
    run_id = flow_run.get_id()
    if manifest.exists() and run_id:
        version = json.loads(manifest.read_text())["version"]
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, name=f"data-{version}-{flow_run.get_name()}")


def run_stages(repo: Path, p: Params, only_if_new_data: bool, train_timeout_s: float,
               hardware_slot: str) -> list[dict]:
    r = str(repo)
    before = stage_outs(read_lock(repo), "ingest")
    try:  # a remote source may have changed without DVC seeing it: always look
        summaries = [ingest(stage="ingest", repo=r, timeout_s=600, force=is_remote(p.ingest.source))]
    finally:
        artifacts.publish_data_report(repo, p)
    name_after_data(repo, p)
    new_data = summaries[0]["outs"] != before
    parent_before = stage_outs(read_lock(repo), "parent")
    summaries.append(parent(stage="parent", repo=r, timeout_s=600))  # re-resolves train.init.from: every run
    if only_if_new_data and not new_data and stage_outs(read_lock(repo), "register"):
        if summaries[-1]["outs"] == parent_before:  # a moved stage tag (digits@prod) is news too
            print("ingest: the data version is unchanged" + (", and so is the parent" if p.train.init.from_ else "")
                  + "; nothing to retrain")
            return summaries
        print(f"parent: {p.train.init.from_} now resolves to other weights; retraining on the same data")
    summaries += [clean(stage="clean", repo=r, timeout_s=600), buffer(stage="buffer", repo=r, timeout_s=600),
                  augment(stage="augment", repo=r, timeout_s=600)]
    with hardware.share(hardware_slot, world_size(p.train)):  # its share of the machine's devices
        summaries.append(train(stage="train", repo=r, timeout_s=train_timeout_s))
    artifacts.publish_training(repo, p)
    summaries += [evaluate(stage="evaluate", repo=r, timeout_s=600), register(stage="register", repo=r, timeout_s=600)]
    artifacts.publish_model(repo, p)
    artifacts.publish_continual(repo, p)
    return summaries


@flow(name="training-pipeline", log_prints=True)
def pipeline(repo: str = ".", overrides: dict[str, Any] | None = None, branch: str | None = None,
             push: bool = False, dvc_remote: str | None = None, git_remote: str | None = None,
             only_if_new_data: bool = False, train_timeout_s: float = 3 * 3600,
             hardware_slot: str = "training-hardware") -> dict:
    """ingest -> parent -> clean -> buffer -> augment -> train -> evaluate -> register, through DVC.

    overrides: params.yaml keys for this run only, e.g. {"train.epochs": 5}; committed with the run.
    branch: commit the run's dvc.lock, params and metrics to this branch (made from HEAD if new).
    push: push data, checkpoints and model to `dvc_remote` (DVC's default remote if None), and the
        branch and tags to `git_remote` if given.
    only_if_new_data: stop after ingest (and the parent stage) when neither the data version nor the parent
        (train.init.from, re-resolved: a moved digits@prod) changed.
    """
    path = Path(repo).resolve()
    run_name = flow_run.get_name() or "local"
    with slot(checkout_slot(path)):  # DVC cannot run twice in one checkout
        if branch:
            trace.switch_branch(path, branch)
        original = trace.apply_overrides(path, overrides) if overrides else None
        try:
            p = artifacts.repo_params(path)  # as this run sees them, overrides included
            steps = plan.plan(path, driver="flow")
            create_markdown_artifact(key="run-plan", markdown=plan.markdown(steps, "flow"),
                                     description=", ".join(s["stage"] for s in steps if s["action"] == plan.RUN)
                                     or "everything up to date")
            summaries = run_stages(path, p, only_if_new_data, train_timeout_s, hardware_slot)
            ran = [s["stage"] for s in summaries if s["status"] == "ran"]
            if branch or overrides:
                what = f" with {json.dumps(overrides)}" if overrides else ""
                sha = commit_paths(path, f"Pipeline run {run_name}{what}: ran {', '.join(ran) or 'nothing'}",
                                   trace.tracked_outputs(path))
                print(f"trace: {'committed ' + sha[:8] if sha else 'nothing new to commit'} "
                      f"on {branch or 'the current branch'}")
        finally:
            if original is not None:
                trace.restore_params(path, original, run_name)
        if push:
            for line in trace.push(path, dvc_remote, git_remote, branch):
                print(f"push: {line}")
    print(f"stages run: {', '.join(ran) or 'none (everything up to date)'}")
    return {s["stage"]: s for s in summaries}


if __name__ == "__main__":
    with hardware.patient_embedded_server():
        pipeline(repo=sys.argv[1] if len(sys.argv) > 1 else ".")
