"""buffer: the replay buffer of this data version, from the parent's buffer and the new training rows.

    python -m tasks.buffer            # what `dvc repro buffer` runs

The rows of the newest experience (clean's rows.parquet: the data version each
row first appeared in, along the parent lineage) that clean put in the
training split join the parent's buffer (fetched by the parent stage with the
parent's weights), and a class-balanced reservoir of `continual.buffer.size`
rows is kept (tasks/continual/buffer.py). The buffer is built on every run,
whatever `continual.strategy` is, so every registered version carries one
(register records its hash in the lineage) and a later run can replay it.
Augment writes it as the `replay` split; train mixes it into every batch with
`continual.strategy: replay`, and takes EWC's Fisher information and LwF's
old classes from its earlier rows.
"""

from __future__ import annotations

from pathlib import Path

from tasks.continual import buffer as buf
from tasks.data import inherit
from tasks.data.tables import read_json, read_model_table, sha256_file
from tasks.errors import InputError, run_main
from tasks.params import Buffer, load_params


def build_buffer(params: Buffer, clean_path: Path, rows_path: Path, transform_path: Path, parent: Path,
                 out: Path) -> dict:
    """Write out/buffer.parquet and out/buffer.json; return the record."""
    clean = read_model_table(clean_path)
    rows = inherit.read_rows(rows_path)
    if rows.num_rows != clean.num_rows:
        raise InputError(f"{rows_path}: {rows.num_rows} rows, but {clean_path} has {clean.num_rows}; rerun clean")
    listed = inherit.experiences_of(rows, rows_path)
    current = len(listed) - 1
    new = buf.candidates(clean, rows, current)
    if not inherit.added_experience(listed, parent):  # every row is the parent's: its buffer has seen them
        new = new.slice(0, 0)
    old, dropped, why = buf.read(parent), 0, ""
    if old is not None:
        old, dropped, why = buf.carried(old, new.schema, rows, parent / buf.TABLE)
    table = buf.build(old, new, params.size, params.balance, params.seed)
    record = {"size": params.size, "balance": params.balance, "seed": params.seed, "current_experience": current,
              "data_version": listed[current]["data_version"], "new_training_rows": new.num_rows,
              "parent_buffer": sha256_file(parent / buf.TABLE) if old is not None else None,
              "parent_rows_held_out_dropped": dropped, "parent_not_carried": why or None,
              **buf.describe(table, read_json(transform_path, "clean transform").get("classes") or [])}
    return buf.write(out, table, record)


def main() -> None:
    def body():
        p = load_params()
        inherit.fetched(p.paths.parent, p.train.init.from_)
        r = build_buffer(p.continual.buffer, p.paths.clean, p.paths.rows, p.paths.transform, p.paths.parent,
                         p.paths.buffer)
        if r["parent_not_carried"]:
            print(f"buffer: the parent's buffer is not carried: {r['parent_not_carried']}", flush=True)
        print(f"buffer: {r['rows']} rows (size {r['size']}, balanced by {r['balance']}) from "
              + (f"the parent's buffer {r['parent_buffer'][:12]} and " if r["parent_buffer"] else "")
              + f"{r['new_training_rows']} new training rows of experience {r['current_experience']}"
              + (f"; {r['parent_rows_held_out_dropped']} of the parent's rows dropped (held out here)"
                 if r["parent_rows_held_out_dropped"] else "") + f"; per class {r['per_class']}")

    run_main(body)


if __name__ == "__main__":
    main()
