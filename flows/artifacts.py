"""What a pipeline run shows in the Prefect UI, besides its task runs and logs.

    data-report        markdown: the data contract (pass or fail, violations, drift) and what clean did
    training-progress  progress: updated every epoch while training runs (flows/stages.py)
    training-epochs    table: the per-epoch training and validation metrics
    evaluation-metrics table: test precision, recall, F1 per class and macro
    registered-model   markdown: the version, the promotion decision, training curves and the
                       confusion matrix as images
    model-card         markdown: the version's model card (tasks/registry/model_card.py)
    run-plan           markdown: which stages the run was to execute, and why (flows/plan.py)

Every function reads files the stages wrote (paths from the run's params); a
file a run did not produce is left out, never invented.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.evaluate import CONFUSION_PNG, CURVES_PNG, read_metrics
from tasks.ingest import failed_report_path
from tasks.params import Params, load_params


def repo_params(repo: Path) -> Params:
    with contextlib.chdir(repo):
        return load_params()


def png_markdown(path: Path, title: str) -> str:
    """An inline image (data URI): the UI shows it with no file server behind it."""
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f"### {title}\n\n![{title}](data:image/png;base64,{data})\n\n"


def contract_markdown(repo: Path, p: Params) -> list[str]:
    path, failed = repo / p.paths.contract_report, repo / failed_report_path(p.paths.contract_report)
    if failed.exists() and (not path.exists() or failed.stat().st_mtime >= path.stat().st_mtime):
        path = failed  # this run's ingest refused the data
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    status = "passed" if r["ok"] else f"**failed** ({len(r['violations'])} violation(s))"
    md = [f"## Data contract {status}\n", f"- source: `{r['source']}` ({r['rows']} rows)",
          f"- data version: `{r.get('version') or 'not written'}`"]
    if r["violations"]:
        md += ["", "| check | column | rows | problem | examples |", "|---|---|---|---|---|"]
        md += [f"| {v['check']} | {v['column'] or ''} | {v['rows']} | {v['message']} | "
               f"{'; '.join(v['examples'][:3])} |" for v in r["violations"]]
    d = r.get("drift") or {}
    if d.get("against"):
        md += ["", f"### Drift against data version `{d['against']}`",
               f"- label distribution shift (total variation): {d['label_shift']}"]
        md += [f"- mean shift of `{k}`: {v} previous stds" for k, v in list(d["mean_shift_top"].items())[:5]]
        md += [f"- **over the limit**: {e}" for e in d["exceeded"]]
    return md


def clean_markdown(repo: Path, p: Params) -> list[str]:
    path = repo / p.paths.clean_report
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    md = ["", "## Cleaning", f"- rows in: {r['rows_in']}, rows out: **{r['rows_out']}**",
          f"- dropped: {r['duplicates_dropped']} duplicates, {r['unlabeled_dropped']} unlabeled, "
          f"{r['incomplete_dropped']} incomplete",
          f"- filled: {r['missing_values_filled']} missing values, {r.get('non_finite_filled', 0)} inf or -inf",
          f"- outliers clipped: {r.get('values_clipped', 0)}; saturated at the scaled limit: "
          f"{r.get('values_saturated', 0)}",
          f"- features: {r['features']}, classes: {r['classes']}",
          "- split: " + ", ".join(f"{k} {v}" for k, v in r["split_rows"].items())]
    return md


def publish_data_report(repo: Path, p: Params) -> None:
    """The data contract report and the clean report, as one markdown artifact (pass or fail)."""
    md = contract_markdown(repo, p)
    if not md:
        return
    md = ["# Data report\n", *md, *clean_markdown(repo, p)]
    create_markdown_artifact(key="data-report", markdown="\n".join(md) + "\n",
                             description=md[1].lstrip("# ").strip())


def publish_training(repo: Path, p: Params) -> None:
    """The per-epoch metrics of the last training, as a table."""
    path = repo / p.paths.train_history
    if not path.exists():
        return
    history = json.loads(path.read_text())
    rows = [{k: (round(v, 5) if isinstance(v, float) else v) for k, v in e.items()} for e in history]
    if rows:
        create_table_artifact(key="training-epochs", table=rows, description=f"{len(rows)} epoch(s)")


def publish_evaluation(repo: Path, p: Params) -> None:
    metrics = read_metrics(repo / p.paths.metrics, repo / p.paths.per_class)
    if "per_class" in metrics:
        rows = [{"class": c, **{k: round(v, 4) for k, v in m.items()}} for c, m in metrics["per_class"].items()]
        rows.append({"class": "macro", "precision": round(metrics["precision_macro"], 4),
                     "recall": round(metrics["recall_macro"], 4), "f1": round(metrics["f1_macro"], 4),
                     "support": metrics["test_rows"]})
        description = f"Test accuracy {metrics['accuracy']:.4f}"
    else:  # regression
        rows = [{"metric": k, "value": round(v, 4)} for k, v in metrics.items() if isinstance(v, (int, float))]
        description = "Test " + ", ".join(f"{r['metric']} {r['value']}" for r in rows[:3])
    create_table_artifact(key="evaluation-metrics", table=rows, description=description)


def publish_model(repo: Path, p: Params) -> None:
    """Test metrics as a table; the registered version, its figures and its model card as markdown."""
    publish_evaluation(repo, p)
    metrics = json.loads((repo / p.paths.metrics).read_text())
    lineage = json.loads((repo / p.paths.lineage).read_text())
    promo = lineage["promotion"]
    md = (f"# {lineage['artifact']} {lineage['version']}\n\n"
          f"- test {p.register.metric}: **{metrics[p.register.metric]:.4f}**\n"
          f"- stage `{promo['stage']}`: {'promoted' if promo['promote'] else 'not promoted'} "
          f"({promo['reason']})\n- model sha256: `{lineage['model']['sha256'][:16]}`\n"
          f"- code commit: `{lineage['code_commit']}`\n\n")
    md += png_markdown(repo / p.paths.figures / CURVES_PNG, "Training curves")
    md += png_markdown(repo / p.paths.figures / CONFUSION_PNG, "Confusion matrix")
    create_markdown_artifact(key="registered-model", markdown=md,
                             description=f"{lineage['artifact']} {lineage['version']}")
    card = repo / p.paths.model_card
    if card.exists():
        create_markdown_artifact(key="model-card", markdown=card.read_text(),
                                 description=f"model card of {lineage['artifact']} {lineage['version']}")
