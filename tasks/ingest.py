"""ingest: read a source, check it against the data contract, snapshot it as a data version.

    python -m tasks.ingest            # what `dvc repro ingest` runs

The source (tasks/data/sources.py: files, folders, image folders, URLs) is read
whole, cut to its label budget where one is set (`ingest.labels`,
`ingest.per_class`: tasks/data/budget.py; the manifest and the report record it
as `selection`) and, between those two, to the experiences 0..upto of a
continual-learning stream where `ingest.stream.kind` asks for one
(tasks/data/stream.py; recorded as `stream`), checked against the contract in params.yaml
(tasks/data/contract.py) and written as a Parquet snapshot plus a manifest. The
snapshot's content hash is the data version: unchanged data gives
byte-identical files, so DVC reruns nothing downstream; changed data gives a
new version, and earlier versions stay in DVC's cache and git history
(`dvc get . data/raw/table.parquet --rev <commit>`).

Ingest is the single gate: the contract (tasks/data/contract.py) and, given
the clean params, what clean would refuse of this table (tasks/data/selection.py:
its split, its fits) are checked before the snapshot is replaced, so a source
that passes goes through every later stage without a data error.

Only the data makes the version: the source's path is not in the snapshot or
the manifest (a renamed file of the same bytes is the same data, and nothing
downstream reruns); it is in the contract report, for people. What an image
folder holds that is not read is named on stderr and in the report (`skipped`).

The contract report (violations, drift against the previous version) is a
DVC output describing the current data version. A refused source gets its
report beside it (`contract.failed.json`, not a DVC output, so the last good
version stays clean in `dvc status`), the previous snapshot stays in place,
and the stage fails with every problem listed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.data import contract as dc
from tasks.data.budget import label_budget
from tasks.data.selection import clean_refusals
from tasks.data.sources import MAX_LISTED, is_remote, read_source
from tasks.data.stream import counts, stream
from tasks.data.tables import read_json, sha256_file, write_json, write_table
from tasks.errors import InputError, run_main
from tasks.params import Clean, Contract, Ingest, load_params


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns (e.g. pandas categoricals in Parquet) become plain columns."""
    fields = [pa.field(f.name, f.type.value_type) if pa.types.is_dictionary(f.type) else f for f in table.schema]
    return table.cast(pa.schema(fields)) if fields != list(table.schema) else table


def failed_report_path(report_path: Path) -> Path:
    """Where a refused ingest writes its report (git-ignored, not a DVC output)."""
    return Path(report_path).with_suffix(".failed.json")


def _previous(manifest_path: Path, report_path: Path) -> tuple[dict | None, dict | None]:
    try:
        return read_json(manifest_path, "manifest"), read_json(report_path, "report")
    except InputError:
        return None, None


def warn_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _warn_skipped(skipped: tuple[str, ...], warn) -> None:
    for entry in skipped[:MAX_LISTED]:
        warn(f"ingest: warning: skipped {entry}")
    if len(skipped) > MAX_LISTED:
        warn(f"ingest: warning: and {len(skipped) - MAX_LISTED} more skipped (all in the contract report)")


def _budget(table: pa.Table, params: Ingest, clean: Clean | None) -> tuple[np.ndarray | None, dict | None]:
    """The rows ingest.labels and ingest.per_class keep (tasks/data/budget.py) and the record of what was
    applied (None, None: every row kept)."""
    return label_budget(table, params, clean.split if clean is not None else None)


def _select(table: pa.Table, params: Ingest, clean: Clean | None) -> tuple[np.ndarray | None, pa.Table, dict | None,
                                                                             dict | None]:
    """The source rows kept (None: all), the table of them, and the records of the label budget and the stream
    (None: not applied). The stream's experiences 0..upto (tasks/data/stream.py) are cut between the budget's
    two steps: after ingest.labels, before ingest.per_class."""
    if params.stream.kind == "none":
        rows, selection = _budget(table, params, clean)
        return rows, table if rows is None else table.take(pa.array(rows)), selection, None
    rows, chosen = _budget(table, params.model_copy(update={"per_class": None}), clean)
    cut = stream(table if rows is None else table.take(pa.array(rows)), params)
    kept = cut.rows if rows is None else rows[cut.rows]
    sample, sampled = _budget(cut.table, params.model_copy(update={"labels": None}), clean)
    t, experience = cut.table, cut.experience
    if sample is not None:
        t, experience, kept = t.take(pa.array(sample)), experience[sample], kept[sample]
    selection = None
    if chosen or sampled:  # one record of the budget, as without a stream
        selection = (sampled or chosen) | {"labels": chosen["labels"] if chosen else None,
                                           "rows_before": table.num_rows, "rows_after": t.num_rows}
    return kept, t, selection, cut.record | {"rows": counts(experience, params.stream.upto)}


def _stream_line(record: dict) -> str:
    """One line for people: which experiences the snapshot holds, and their rows."""
    k = record["upto"]
    line = (f"ingest: stream {record['kind']}: experience{'s 0..' if k else ' '}{k} of {record['experiences']} "
            f"in this snapshot, rows {' + '.join(map(str, record['rows']))}")
    if record["kind"] == "class_incremental":
        return line + f" (classes {', '.join(map(str, record['classes'][:k + 1]))})"
    return line + (f" (rotated by up to {k * record['rotation_degrees']:g} degrees, noise std up to "
                   f"{k * record['noise_std']:g})" if k else " (the source rows as they are)")


def ingest(params: Ingest, contract: Contract, raw_path: Path, manifest_path: Path, report_path: Path,
           log=print, clean: Clean | None = None, warn=warn_stderr) -> dict:
    """Snapshot the source into `raw_path` if it keeps the contract (and, given `clean`, clean would take it);
    return the manifest."""
    source = read_source(params, log)
    _warn_skipped(source.skipped, warn)
    rows, table, selection, streamed = _select(_plain(source.table), params, clean)
    place = source.where or dc.row_number

    def where(i: int) -> str:  # an example row, named by its place in the source
        return place(i if rows is None else int(rows[i]))

    if streamed:
        log(_stream_line(streamed))
    violations = dc.check(table, contract, params, where)
    if streamed:  # too few rows: the stream's first versions hold a part of the source
        hint = f" (ingest.stream.upto {params.stream.upto} holds a part of the source: lower contract.min_rows)"
        violations = [v | {"message": v["message"] + hint} if v["check"] == "rows" else v for v in violations]
    readable = not any(v["check"] in ("columns", "type") for v in violations)
    if clean is not None and readable:
        violations += clean_refusals(table, params, clean, {v["column"] for v in violations})
    prof = dc.profile(table, params.label_column, params.text_column, params.task == "regression") if readable \
        else None
    old_manifest, old_report = _previous(manifest_path, report_path)
    report = {"source": params.source, "source_sha256": source.sha256, "rows": table.num_rows,
              "violations": violations, "drift": {"against": None, "exceeded": []}, "skipped": list(source.skipped)}
    report |= ({"selection": selection} if selection else {}) | ({"stream": streamed} if streamed else {})
    if prof is not None:
        prof["version"] = None  # filled in below once the snapshot's hash is known
        same = old_manifest and old_manifest.get("source_sha256") == source.sha256 \
            and old_manifest.get("selection") == selection and old_manifest.get("stream") == streamed
        if same and old_report and old_report.get("ok") and old_report.get("version") == old_manifest["version"]:
            report["drift"] = old_report.get("drift", report["drift"])  # the same data: keep its comparison
        else:
            report["drift"] = dc.drift(old_manifest.get("profile") if old_manifest else None, prof, contract.drift)
        if contract.drift.gate:
            violations += [dc.violation("drift", None, table.num_rows, msg) for msg in report["drift"]["exceeded"]]
    report["ok"] = not violations
    failed_path = failed_report_path(report_path)
    if violations:  # beside the DVC output, which keeps describing the last good version
        write_json(failed_path, report)
        raise InputError(dc.format_violations(params.source, violations, failed_path))
    failed_path.unlink(missing_ok=True)
    write_table(table, raw_path)
    digest = sha256_file(raw_path)
    prof["version"] = digest[:16]
    manifest = {
        "version": digest[:16], "sha256": digest, "source_sha256": source.sha256,
        "files": source.files, "rows": table.num_rows, "label_column": params.label_column, "task": params.task,
        "text_column": params.text_column,
        "image_shape": list(params.image_shape) if params.image_shape else None,
        "schema": {f.name: str(f.type) for f in table.schema}, "profile": prof,
    } | ({"selection": selection} if selection else {}) | ({"stream": streamed} if streamed else {})
    write_json(manifest_path, manifest)
    write_json(report_path, report | {"version": digest[:16]})
    return manifest


def main() -> None:
    def body():
        p = load_params()
        src = p.ingest.source
        local = not (is_remote(src) or src.startswith("pkg:"))
        if local and not Path(src).resolve().is_relative_to(p.paths.sources.resolve()):
            print(f"ingest: warning: {src} is outside {p.paths.sources}/, so DVC will not rerun "
                  f"ingest when it changes; move it there", flush=True)
        m = ingest(p.ingest, p.contract, p.paths.raw, p.paths.raw_manifest, p.paths.contract_report, clean=p.clean)
        print(f"ingest: data version {m['version']}: {m['rows']} rows, {len(m['schema'])} columns "
              f"from {p.ingest.source} -> {p.paths.raw}")

    run_main(body)


if __name__ == "__main__":
    main()
