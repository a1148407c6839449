"""parent: a warm start's parent (train.init.from), fetched into the workspace as an input DVC tracks.

    python -m tasks.parent        # what `dvc repro parent` runs (it runs on every repro: see below)

A registered version (digits@prod, digits@v0.0.3) is resolved through the
registry to its commit, and its files are read at that commit through DVC (the
cache, or the remote when they are not pulled), each checked against the
SHA-256 its lineage recorded:

- `model.safetensors`, the weights (safetensors only, never a pickle);
- `transform.json`, the parent's fitted preprocessing: clean applies it to the
  child's rows rather than fitting its own, so the parent sees its inputs
  scaled as it was trained (tasks/data/inherit.py refuses data that does not
  fit it, naming the column);
- `tokenizer.json`, for text: augment tokenizes with the parent's vocabulary;
- `rows.parquet`, the hashes and splits of the rows the parent was cleaned
  from: clean refuses a child whose test rows the parent trained on;
- `buffer.parquet`, the parent's replay buffer (tasks/buffer.py builds the
  child's from it), and `continual.json`, its accuracy matrix over every data
  version's test set (evaluate extends it by the child's row);
- `parent.json`, what the child's lineage records as `derived_from`.

A stage that holds no version yet (the first run of a continual loop, with
`train.init.unassigned: scratch`) is recorded as `{"from": spec, "unassigned":
true}`: every stage below then runs as from scratch.

A safetensors file (train.init.from: path/to/model.safetensors) is copied with
its hash; it brings no preprocessing, so the child fits its own. With no
parent, the folder holds only `{"from": null}`.

Why the stage is `always_changed`: a stage tag (prod) moves in git, where DVC
cannot see it, so the stage re-resolves the spec on every `dvc repro` (a
fraction of a second). It writes the same bytes while the spec resolves to the
same version, and DVC reruns what depends on it (clean, then the rest) only
when they change: moving prod reruns the child's stages, and nothing else.
`dvc status` therefore always lists `parent` as "always changed".
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tasks.data.inherit import FILES, RECORD
from tasks.errors import InputError, run_main
from tasks.params import load_params


def fetch_registered(spec: str, out: Path, repo: str | Path) -> dict:
    """The version's weights and preprocessing into `out`, each checked against its recorded sha256."""
    from tasks.registry.reading import checked, reader, recorded, registered_weights
    from tasks.training.init import read_parent

    try:
        data, _, sha256, v, rec = registered_weights(spec, repo)
    except InputError as e:
        raise InputError(f"train.init.from {spec}: {e}") from None
    (out / FILES["weights"]).write_bytes(data)
    parent = read_parent(str(out / FILES["weights"]))  # safetensors written by train, with its config
    if parent.identity["sha256"] != sha256:
        raise InputError(f"train.init.from {spec}: {v}'s weights differ from the sha256 recorded at "
                         f"registration; the file was changed, so it is not used")
    read, pre = reader(repo, v), rec.get("preprocessing") or {}
    for what in ("transform", "tokenizer", "rows", "buffer", "continual"):
        if pre.get(what):
            item = recorded(v, pre[what], what)
            (out / FILES[what]).write_bytes(checked(read(item["path"], what), item, v, what))
    params = rec.get("params") or {}
    return {"artifact": v.name, "version": v.version, "commit": v.commit,
            "weights": {"path": rec["model"]["path"], "sha256": sha256},
            "source": (params.get("ingest") or {}).get("source"), "text": (params.get("augment") or {}).get("text"),
            "rows": bool(pre.get("rows")), "model": parent.model}


def fetch_file(spec: str, out: Path) -> dict:
    """A safetensors file train wrote, parsed where it is (an error names the user's path), then copied."""
    from tasks.training.init import read_parent

    parent = read_parent(spec)
    shutil.copyfile(spec, out / FILES["weights"])
    return {"artifact": None, "version": None, "commit": None,
            "weights": {"path": spec, "sha256": parent.identity["sha256"]}, "source": None, "text": None,
            "rows": False, "model": parent.model}


def unassigned_stage(spec: str, repo: str | Path) -> bool:
    """Whether `spec` names a stage (digits@prod) that holds no version yet."""
    from tasks.registry.versions import VERSION, parse_spec, stage_holder

    name, ref = parse_spec(spec)
    return ref != "latest" and not VERSION.match(ref) and stage_holder(name, ref, repo) is None


def fetch(spec: str | None, out: Path, repo: str | Path | None = None, unassigned: str = "refuse") -> dict:
    """`out` afresh: the parent's files and parent.json (only {"from": null} without a parent). The parent
    is read whole and parsed before anything in `out` is replaced, so a bad spec leaves it as it was. With
    `unassigned` scratch, a stage that holds no version yet is recorded as such: the run starts from scratch."""
    from tasks.registry.git import registry_repo
    from tasks.training.init import is_file

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if spec is None:
            record = {"from": None}
        elif unassigned == "scratch" and not is_file(spec) and unassigned_stage(spec, repo or registry_repo()):
            record = {"from": spec, "unassigned": True}
        else:
            record = fetch_file(spec, tmp) if is_file(spec) else fetch_registered(spec, tmp, repo or registry_repo())
            record = {"from": spec, **record}
        (tmp / RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def main() -> None:
    def body():
        p = load_params()
        r = fetch(p.train.init.from_, p.paths.parent, unassigned=p.train.init.unassigned)
        if r["from"] is None:
            print("parent: none (train.init.from is null): training starts from scratch")
        elif r.get("unassigned"):
            print(f"parent: none yet: {r['from']} holds no version (train.init.unassigned: scratch), so this "
                  f"run starts from scratch")
        else:
            what = f"{r['artifact']} {r['version']} (commit {r['commit'][:8]})" if r["artifact"] else r["from"]
            print(f"parent: {r['from']} is {what}, a {r['model']}, weights sha256 {r['weights']['sha256'][:12]}"
                  + ("; its preprocessing comes with it" if (p.paths.parent / FILES["transform"]).exists() else ""))

    run_main(body)


if __name__ == "__main__":
    main()
