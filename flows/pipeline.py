"""The training pipeline as a Prefect flow: dvc.yaml's stages, driven through DVC.

    python -m flows.pipeline                    # one run, on the embedded Prefect server
    prefect deploy --all                        # the nightly deployment (prefect.yaml)
    prefect worker start --pool training        # ...and a worker that runs it

Each stage of dvc.yaml is one Prefect task that runs `dvc repro --single-item
<stage>`, so DVC decides what is stale and writes dvc.lock exactly as
`dvc repro` does: a flow run after `dvc repro` executes nothing. The stage's
output is streamed line by line into the Prefect run log. Ingest is retried
when it fails on a transient I/O error (exit code 75), and forced when the
source is a URL (DVC cannot see a remote file change). The data contract
report (pass or fail), the evaluation metrics and the registered version are
published as Prefect artifacts.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run

from tasks.errors import EXIT_TRANSIENT
from tasks.evaluate import CONFUSION_PNG, CURVES_PNG
from tasks.ingest import failed_report_path
from tasks.params import load_params
from tasks.sources import is_remote


class StageFailed(RuntimeError):
    """A stage's command failed; the message carries the stage's own error lines."""


class TransientStageFailure(StageFailed):
    """A stage failed on a transient I/O error (exit code 75): worth a retry."""


def _stage_outs(repo: Path, stage: str) -> dict:
    lock = yaml.safe_load((repo / "dvc.lock").read_text()) if (repo / "dvc.lock").exists() else {}
    entry = (lock or {}).get("stages", {}).get(stage, {})
    return {o["path"]: o.get("md5") for o in entry.get("outs", [])}


def _error_lines(lines: list[str]) -> list[str]:
    """The stage's error lines, with the indented lines that continue them (one per violation)."""
    errors, inside = [], False
    for ln in lines:
        if ln.startswith(("error", "ERROR")):
            errors.append(ln)
            inside = True
        elif inside and ln.startswith("  "):
            errors.append(ln)
        else:
            inside = False
    return errors


def run_dvc_stage(stage: str, repo: str = ".", timeout_s: float = 3600, force: bool = False) -> dict:
    """`dvc repro --single-item <stage>` as a subprocess, its lines in the run log.

    The process runs in its own session so that on timeout the whole group
    (DVC, the DeepSpeed launcher and its ranks) is killed, not just DVC.
    """
    logger = get_run_logger()
    env = os.environ | {"PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1",
                        "PREFECT__FLOW_RUN_ID": str(flow_run.get_id() or "")}
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage] + (["--force"] if force else [])
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1, start_new_session=True)
    timed_out = threading.Event()

    def kill_group():
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_s, kill_group)
    timer.start()
    lines = []
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line:
                logger.info(line)
                lines.append(line)
        rc = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:  # cancelled or crashed while the stage was running
            kill_group()
            proc.wait()
    if rc != 0:
        if timed_out.is_set():
            raise StageFailed(f"stage {stage!r} killed after its {timeout_s:.0f} s timeout")
        errors = _error_lines(lines) or lines[-5:]
        message = f"stage {stage!r} failed:\n" + "\n".join(errors)
        if re.search(rf"exited with {EXIT_TRANSIENT}\b", "\n".join(lines)):
            raise TransientStageFailure(message)
        raise StageFailed(message)
    text = "\n".join(lines)
    status = ("ran" if f"Running stage '{stage}'" in text
              else "restored" if "is cached - skipping run" in text else "skipped")
    return {"stage": stage, "status": status, "seconds": round(time.monotonic() - start, 1),
            "outs": _stage_outs(Path(repo), stage)}


def retry_if_transient(task, task_run, state) -> bool:
    return isinstance(state.result(raise_on_failure=False), TransientStageFailure)


ingest = task(run_dvc_stage, name="ingest", retries=3, retry_delay_seconds=[2, 10, 30],
              retry_condition_fn=retry_if_transient)
clean = task(run_dvc_stage, name="clean")
augment = task(run_dvc_stage, name="augment")
train = task(run_dvc_stage, name="train")
evaluate = task(run_dvc_stage, name="evaluate")
register = task(run_dvc_stage, name="register")


def _png_markdown(path: Path, title: str) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\n"


def publish_contract(repo: Path) -> None:
    """The data contract report (violations, drift) as a markdown artifact, pass or fail."""
    with contextlib.chdir(repo):
        p = load_params()
    path, failed = repo / p.paths.contract_report, repo / failed_report_path(p.paths.contract_report)
    if failed.exists() and (not path.exists() or failed.stat().st_mtime >= path.stat().st_mtime):
        path = failed  # this run's ingest refused the data
    if not path.exists():
        return
    r = json.loads(path.read_text())
    status = "passed" if r["ok"] else f"**failed** ({len(r['violations'])} violation(s))"
    md = [f"# Data contract {status}\n", f"- source: `{r['source']}` ({r['rows']} rows)",
          f"- data version: `{r.get('version') or 'not written'}`"]
    if r["violations"]:
        md += ["", "| check | column | rows | problem | examples |", "|---|---|---|---|---|"]
        md += [f"| {v['check']} | {v['column'] or ''} | {v['rows']} | {v['message']} | "
               f"{'; '.join(v['examples'][:3])} |" for v in r["violations"]]
    d = r.get("drift") or {}
    if d.get("against"):
        md += ["", f"## Drift against data version `{d['against']}`",
               f"- label distribution shift (total variation): {d['label_shift']}"]
        md += [f"- mean shift of `{k}`: {v} previous stds" for k, v in list(d["mean_shift_top"].items())[:5]]
        md += [f"- **over the limit**: {e}" for e in d["exceeded"]]
    create_markdown_artifact(key="data-contract", markdown="\n".join(md) + "\n",
                             description=f"data contract {'passed' if r['ok'] else 'failed'}")


def publish(repo: Path) -> None:
    """Metrics as a table artifact; figures and the registered version as markdown."""
    with contextlib.chdir(repo):
        p = load_params()
    metrics = json.loads((repo / p.paths.metrics).read_text())
    rows = [{"class": c, **{k: round(v, 4) for k, v in m.items()}} for c, m in metrics["per_class"].items()]
    rows.append({"class": "macro", "precision": round(metrics["precision_macro"], 4),
                 "recall": round(metrics["recall_macro"], 4), "f1": round(metrics["f1_macro"], 4),
                 "support": metrics["test_rows"]})
    create_table_artifact(key="evaluation-metrics", table=rows,
                          description=f"Test accuracy {metrics['accuracy']:.4f}")
    lineage = json.loads((repo / p.paths.lineage).read_text())
    promo = lineage["promotion"]
    md = (f"# {lineage['artifact']} {lineage['version']}\n\n"
          f"- test {p.register.metric}: **{metrics[p.register.metric]:.4f}**\n"
          f"- stage `{promo['stage']}`: {'promoted' if promo['promote'] else 'not promoted'} "
          f"({promo['reason']})\n- model sha256: `{lineage['model']['sha256'][:16]}`\n"
          f"- code commit: `{lineage['code_commit']}`\n\n")
    md += _png_markdown(repo / p.paths.figures / CURVES_PNG, "Training curves")
    md += _png_markdown(repo / p.paths.figures / CONFUSION_PNG, "Confusion matrix")
    create_markdown_artifact(key="registered-model", markdown=md,
                             description=f"{lineage['artifact']} {lineage['version']}")


@flow(name="training-pipeline", log_prints=True)
def pipeline(repo: str = ".", train_timeout_s: float = 3 * 3600) -> dict:
    """ingest -> clean -> augment -> train -> evaluate -> register, through DVC."""
    with contextlib.chdir(repo):
        remote = is_remote(load_params().ingest.source)
    try:  # a remote source may have changed without DVC seeing it: always look
        summaries = [ingest(stage="ingest", repo=repo, timeout_s=600, force=remote)]
    finally:
        publish_contract(Path(repo))
    summaries += [
        clean(stage="clean", repo=repo, timeout_s=600),
        augment(stage="augment", repo=repo, timeout_s=600),
        train(stage="train", repo=repo, timeout_s=train_timeout_s),
        evaluate(stage="evaluate", repo=repo, timeout_s=600),
        register(stage="register", repo=repo, timeout_s=600),
    ]
    publish(Path(repo))
    ran = [s["stage"] for s in summaries if s["status"] == "ran"]
    print(f"stages run: {', '.join(ran) or 'none (everything up to date)'}")
    return {s["stage"]: s for s in summaries}


if __name__ == "__main__":
    pipeline(repo=sys.argv[1] if len(sys.argv) > 1 else ".")
