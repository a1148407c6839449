"""What a pipeline run shows in the Prefect UI, besides its task runs and logs.

    data-report        markdown: the data contract (pass or fail, violations, drift) and what clean did
    training-progress  progress: updated every epoch while training runs (flows/stages.py)
    training-epochs    table: the per-epoch training and validation metrics
    evaluation-metrics table: test precision, recall, F1 per class and macro
    registered-model   markdown: the version, the promotion decision, training curves and the
                       confusion matrix as images
    model-card         markdown: the version's model card (tasks/registry/model_card.py)
    run-plan           markdown: which stages the run was to execute, and why (flows/plan.py)
    continual          markdown: the accuracy on every data version's test set (the matrix as a heat map and
                       a table), the average accuracy's trend, and the forgetting gate's verdict
    continual-versions table: every registered version, its data version and strategy, whether it took the
                       stage, and why not

Every function reads files the stages wrote (paths from the run's params); a
file a run did not produce is left out, never invented.
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.continual.scoring import MATRIX_PNG, TREND_PNG
from tasks.errors import InputError
from tasks.evaluate import CONFUSION_PNG, CURVES_PNG, read_metrics
from tasks.files import MATRIX_FILE
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


def matrix_markdown(rec: dict) -> list[str]:
    """The matrix as a markdown table: a row per model, a column per data version's test set."""
    names = [str(c["data_version"] or c["experience"])[:10] for c in rec["experiences"]]
    md = ["| model after | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    md += [f"| {who} | " + " | ".join("" if c is None else f"{c:.3f}" for c in row) + " |"
           for who, row in zip(rec["models"], rec["matrix"])]
    return md


def publish_continual(repo: Path, p: Params) -> None:
    """The accuracy on every past test set and the gate's verdict (markdown), and every registered version's
    outcome (a table): which versions took the stage in the loop, and why the others did not."""
    path = repo / p.paths.continual / MATRIX_FILE
    if not path.exists() or not json.loads(path.read_text()).get("experiences"):
        return
    rec = json.loads(path.read_text())
    s = rec.get("summary") or {}
    lineage = json.loads((repo / p.paths.lineage).read_text()) if (repo / p.paths.lineage).exists() else {}
    promo = lineage.get("promotion") or {}
    md = [f"# Continual learning: {len(rec['experiences'])} data version(s), strategy `{p.continual.strategy}`", "",
          f"- average accuracy: **{s.get('average_accuracy', rec['matrix'][-1][-1]):.4f}**"]
    if s.get("backward_transfer") is not None:
        md += [f"- backward transfer: {s['backward_transfer']:+.4f}",
               "- forgetting: " + ", ".join(f"`{k[:10]}` {v:.4f}" for k, v in s["forgetting"].items())]
    if promo:
        md.append(f"- {lineage.get('artifact')} {lineage.get('version')}: "
                  f"{'**promoted**' if promo.get('promote') else '**not promoted**'} to `{promo.get('stage')}` "
                  f"({promo.get('reason')})")
    md += ["", *matrix_markdown(rec), ""]
    text = "\n".join(md) + "\n\n" + png_markdown(repo / p.paths.figures / MATRIX_PNG, "Accuracy matrix")
    text += png_markdown(repo / p.paths.figures / TREND_PNG, "Average accuracy after each data version")
    create_markdown_artifact(key="continual", markdown=text, description=md[0].lstrip("# "))
    rows = version_outcomes(repo, p)
    if rows:
        create_table_artifact(key="continual-versions", table=rows,
                              description=f"{sum(r['promoted'] for r in rows)} of {len(rows)} version(s) took "
                                          f"{p.register.stage}")


def version_outcomes(repo: Path, p: Params) -> list[dict]:
    """Oldest first: each registered version's data version, strategy, average accuracy and promotion."""
    from tasks.registry.versions import Version, read_lineage, versions

    rows = []
    for v in reversed(versions(p.register.name, repo, missing_ok=True)):
        try:
            lin = read_lineage(Version(p.register.name, v["version"], v["commit"]), repo)
        except InputError:  # a version whose lineage cannot be read is listed as such
            rows.append({"version": v["version"], "data_version": None, "strategy": None, "average_accuracy": None,
                         "promoted": False, "reason": "lineage unreadable"})
            continue
        cont, promo = lin.get("continual") or {}, lin.get("promotion") or {}
        rows.append({"version": v["version"], "data_version": lin.get("data_version"),
                     "strategy": cont.get("strategy"),
                     "average_accuracy": round(((cont.get("summary") or {}).get("average_accuracy") or 0), 4) or None,
                     "promoted": bool(promo.get("promote")), "reason": promo.get("reason")})
    return rows
