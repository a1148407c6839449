"""The model card of a registered version: data, metrics per class, training setup, intended use, limits.

    card = render(lineage, metrics, history, params.register.card)   # register writes paths.model_card

Markdown, committed with the version beside its lineage (so `git show digits@v0.0.3:registry/model_card.md`
shows it, as does `python -m tasks.registry show digits@v0.0.3`); the Prefect flow publishes it as an
artifact. The words (intended use, limitations) come from params; every number from the run's own files.
"""

from __future__ import annotations

import json

from tasks.params import Card

WEAKEST = 3  # classes named under "Limits"


def _table(header: list[str], rows: list[list]) -> list[str]:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]


def _data(lin: dict) -> list[str]:
    ingest, contract = lin["params"]["ingest"], lin.get("contract") or {}
    inp = lin.get("input") or {}
    lines = ["## Data", "",
             f"- source: `{ingest['source']}` ({inp.get('kind', 'table')}), data version "
             f"`{lin.get('data_version')}`, {inp.get('rows', '?')} rows",
             f"- data contract: {'passed' if contract.get('ok') else 'NOT passed'} "
             f"({contract.get('reason', 'no record')})",
             f"- label column `{ingest['label_column']}` ({ingest.get('task', 'classification')}); "
             f"{len(inp.get('columns') or [])} raw columns", "",
             "Data versions (DVC md5 of each stage output, from `dvc.lock` of the version's commit):", ""]
    rows = [[stage, f"`{path}`", f"`{md5}`"] for stage, outs in (lin.get("data") or {}).items()
            for path, md5 in outs.items()]
    return lines + _table(["stage", "output", "md5"], rows) + [""]


def _metrics(metrics: dict) -> list[str]:
    overall = [[k, v] for k, v in metrics.items() if isinstance(v, (int, float))]
    lines = ["## Metrics (test split)", ""] + _table(["metric", "value"], overall) + [""]
    per = metrics.get("per_class") or {}
    if per:
        rows = [[c, m["precision"], m["recall"], m["f1"], m["support"]] for c, m in per.items()]
        lines += ["Per class:", ""] + _table(["class", "precision", "recall", "f1", "support"], rows) + [""]
    return lines


def _training(lin: dict, history: list[dict]) -> list[str]:
    tr = lin["params"]["train"]
    ds = lin.get("deepspeed") or {}
    opt, sched = tr["optimizer"], tr["schedule"]
    last = history[-1] if history else {}
    return ["## Training setup", "",
            f"- model `{tr['model']}`: `{json.dumps(tr[tr['model']], sort_keys=True)}`",
            f"- {len(history)} epoch(s) run of {tr['epochs']} (early stopping on "
            f"`{tr['early_stopping']['metric']}`, patience {tr['early_stopping']['patience']}); "
            f"last epoch: " + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "epoch"),
            f"- loss `{tr['loss']}`; optimizer `{opt['name']}` lr {opt['lr']}, weight decay {opt['weight_decay']}; "
            f"schedule `{sched['name']}` ({sched['warmup_steps']} warmup steps)",
            f"- DeepSpeed: {lin.get('world_size')} process(es), ZeRO stage "
            f"{(ds.get('zero_optimization') or {}).get('stage')}, precision `{tr['precision']}`, "
            f"batch {ds.get('train_batch_size')} ({tr['batch_size']} per process x {tr['grad_accum']} accumulation)",
            f"- seed {tr['seed']}; code commit `{lin.get('code_commit')}`"
            + (f" with uncommitted changes in {', '.join(lin['code_dirty'])}" if lin.get("code_dirty") else ""),
            f"- Prefect flow run: `{lin.get('prefect_flow_run_id')}`", ""]


def _limits(lin: dict, metrics: dict, card: Card) -> list[str]:
    lines = ["## Limits", ""] + [f"- {text}" for text in card.limitations]
    per = metrics.get("per_class") or {}
    if per:
        weakest = sorted(per.items(), key=lambda kv: kv[1]["f1"])[:WEAKEST]
        lines.append("- weakest classes on the test split: " + ", ".join(f"{c} (f1 {m['f1']:.3f})"
                                                                         for c, m in weakest))
    inp, ingest = lin.get("input") or {}, lin["params"]["ingest"]
    shape = f" {ingest['image_shape'][0]}x{ingest['image_shape'][1]} grayscale images," if ingest.get(
        "image_shape") and inp.get("kind") == "images" else ""
    names = [name for name, _ in inp.get("columns") or []]
    lines.append(f"- input must look like the training source:{shape} the columns {', '.join(names[:8])}"
                 f"{'...' if len(names) > 8 else ''} with the same types; values far outside the training range "
                 f"were never seen")
    return lines + [f"- test set: {metrics.get('test_rows', '?')} rows", ""]


def render(lineage: dict, metrics: dict, history: list[dict], card: Card) -> str:
    promo = lineage.get("promotion") or {}
    head = [f"# Model card: {lineage['artifact']} {lineage['version']}", "",
            f"Registered {lineage.get('registered_at')}; model sha256 `{lineage['model']['sha256']}`. "
            f"Stage `{promo.get('stage')}`: {'promoted' if promo.get('promote') else 'not promoted'} "
            f"({promo.get('reason')}).", "",
            "## Intended use", "", card.intended_use or "(not stated: set register.card.intended_use)", ""]
    return "\n".join(head + _data(lineage) + _metrics(metrics) + _training(lineage, history)
                     + _limits(lineage, metrics, card))
