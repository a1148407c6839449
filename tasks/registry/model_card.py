"""The model card of a registered version: data, metrics per class, training setup, intended use, limits.

    card = render(lineage, metrics, history, params.register.card)   # register writes paths.model_card

Markdown, committed with the version beside its lineage (so `git show digits@v0.0.3:registry/model_card.md`
shows it, as does `python -m tasks.registry show digits@v0.0.3`); the Prefect flow publishes it as an
artifact. The words (intended use, limitations) come from params; every fact about the data (source,
rows, columns, labels and their counts) from what ingest snapshotted (the lineage's `input`, read from
the manifest of the data version trained on) and the fitted transform (its signature), never from a
fixed text. The words are written for one source (`register.card.source`): a version trained on
another source gets a card that says they are missing rather than words about other data. The card
names the parent a version was fine-tuned from (the lineage's `derived_from`), or says it was trained
from scratch (parent_line, which `python -m tasks.registry show` prints too).
"""

from __future__ import annotations

import json

from tasks.params import Card
from tasks.registry.compare import labels_text, signature_of
from tasks.registry.lineage import declared_parent

WEAKEST = 3  # classes named under "Limits"


def parent_line(lin: dict) -> str:
    """Where the weights started: "Fine-tuned from digits v0.0.3 (commit ..., weights sha256 ...)", a
    plain safetensors file, or "Trained from scratch"."""
    d = lin.get("derived_from")
    if not d:
        spec = declared_parent(lin)  # a lineage from before derived_from was recorded
        return (f"Fine-tuned from `{spec}` (registered before the lineage recorded the parent's version)."
                if spec else "Trained from scratch.")
    sha = f"weights sha256 {str(d.get('sha256'))[:8]}…"
    if not d.get("artifact"):
        return f"Fine-tuned from the weights file `{d['spec']}` ({sha})."
    named = f"{d['artifact']}@{d['version']}"
    how = "" if d.get("spec") == named else f"train.init.from `{d['spec']}`; "
    return f"Fine-tuned from {d['artifact']} {d['version']} ({how}commit {str(d.get('commit'))[:8]}, {sha})."


def _table(header: list[str], rows: list[list]) -> list[str]:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]


def source_of(lin: dict) -> str:
    """The source the version's data was read from (the manifest's; an older lineage: its params')."""
    return (lin.get("input") or {}).get("source") or lin["params"]["ingest"]["source"]


def _labels(lin: dict) -> str:
    inp, sig = lin.get("input") or {}, signature_of(lin)
    label = inp.get("label_column") or lin["params"]["ingest"]["label_column"]
    if sig["task"] == "regression":
        return f"- target `{label}` (regression)"
    counts = inp.get("labels") or {}
    labels = sig["labels"] or sorted(counts)
    if not labels:  # a lineage from before labels were recorded
        return f"- label `{label}` (classification)"
    shown = ", ".join(f"{c} ({counts[c]} rows)" if c in counts else str(c) for c in labels[:20])
    return (f"- label `{label}` (classification), {len(labels)} classes {labels_text(labels)}: {shown}"
            f"{', ...' if len(labels) > 20 else ''}")


def _data(lin: dict) -> list[str]:
    contract, inp, sig = lin.get("contract") or {}, lin.get("input") or {}, signature_of(lin)
    lines = ["## Data", "",
             f"- source: `{source_of(lin)}` ({inp.get('kind', 'table')}), data version "
             f"`{lin.get('data_version')}`: {inp.get('rows', '?')} rows, {len(inp.get('columns') or [])} "
             f"columns ({len(sig['features'])} read by the model)",
             _labels(lin),
             f"- data contract: {'passed' if contract.get('ok') else 'NOT passed'} "
             f"({contract.get('reason', 'no record')})", "",
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


def _words_fit(lin: dict, card: Card) -> bool:
    """Whether register.card's words were written for the data this version was trained on."""
    return card.source is None or card.source == source_of(lin)


def _limits(lin: dict, metrics: dict, card: Card) -> list[str]:
    lines = ["## Limits", ""] + [f"- {text}" for text in card.limitations if _words_fit(lin, card)]
    per = metrics.get("per_class") or {}
    if per:
        weakest = sorted(per.items(), key=lambda kv: kv[1]["f1"])[:WEAKEST]
        lines.append("- weakest classes on the test split: " + ", ".join(f"{c} (f1 {m['f1']:.3f})"
                                                                         for c, m in weakest))
    inp, image = lin.get("input") or {}, signature_of(lin)["image_shape"]
    shape = f" {image[0]}x{image[1]} grayscale images," if image and inp.get("kind") == "images" else ""
    names = [name for name, _ in inp.get("columns") or []]
    lines.append(f"- input must look like the training source:{shape} the columns {', '.join(names[:8])}"
                 f"{'...' if len(names) > 8 else ''} with the same types; values far outside the training range "
                 f"were never seen")
    return lines + [f"- test set: {metrics.get('test_rows', '?')} rows", ""]


def _intended_use(lin: dict, card: Card) -> str:
    if not _words_fit(lin, card):
        return (f"(not stated for this data: register.card was written for `{card.source}`, this version was "
                f"trained on `{source_of(lin)}`; set register.card.source, intended_use and limitations for it)")
    return card.intended_use or "(not stated: set register.card.intended_use)"


def render(lineage: dict, metrics: dict, history: list[dict], card: Card) -> str:
    promo = lineage.get("promotion") or {}
    head = [f"# Model card: {lineage['artifact']} {lineage['version']}", "",
            f"Registered {lineage.get('registered_at')}; model sha256 `{lineage['model']['sha256']}`. "
            f"Stage `{promo.get('stage')}`: {'promoted' if promo.get('promote') else 'not promoted'} "
            f"({promo.get('reason')}).", "", parent_line(lineage), "",
            "## Intended use", "", _intended_use(lineage, card), ""]
    return "\n".join(head + _data(lineage) + _metrics(metrics) + _training(lineage, history)
                     + _limits(lineage, metrics, card))
