"""One training run: its model config, its fingerprint, its folder, where it starts, how it ends.

    n = n_outputs(read_json(p.paths.transform, "clean transform"))   # classes, or 1 for a regression
    cfg = model_config(params, schema, n_features, n)                # saved in the model file's metadata
    key = fingerprint(params, splits, parent_sha256, continual)      # what a checkpoint must match to resume
    source, tag, old_world = starting_point(params, stage, checkpoints, key, world)

A run's checkpoints live in `<fingerprint>-w<processes>/`. The fingerprint
covers everything that shapes the weights a run produces: the train params
(less those that only say where and how many processes run), the training and
validation data, the *contents* of a DeepSpeed JSON named by
`train.deepspeed_config` (an edit in place is a new run, not a resume), a warm
start's parent weights (by their SHA-256), the continual strategy with its
params and the replay buffer it reads (by the files' SHA-256), and the
source of the code that computes them (SHAPING_CODE: the models, the loop, its
loss, data order, DeepSpeed config, state and continual strategies). Anything else changed (the
launcher, checkpoint handling, logging) resumes.

The model file (write_model) is a function of the weights and the metadata
alone: the metadata holds no time and no path, and its keys are sorted in the
file (canonical_header), so training twice from scratch with one seed gives
the same bytes, and the registry one version (tasks/registry/compare.py).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import torch
from safetensors.torch import save_file

from tasks.continual.strategies import fingerprint_parts
from tasks.data.tables import atomic_path, image_shape_of, sha256_file, tokens_of, write_json
from tasks.errors import InputError
from tasks.files import DS_CONFIG_FILE, RUN_FILE, split_path
from tasks.params import Continual, Train
from tasks.training import checkpoints as ckpt
from tasks.training import reshard
from tasks.training.agreement import NonFiniteLoss
from tasks.training.state import LoopState

ROOT = Path(__file__).resolve().parents[2]
# the code whose source shapes the weights: the models, the loop, its loss, data order, engine and state
SHAPING_CODE = ("models", "tasks/train.py", "tasks/training/data.py", "tasks/training/loss.py",
                "tasks/training/engine.py", "tasks/training/state.py", "tasks/training/init.py",
                "tasks/continual/strategies.py")
WHERE_NOT_WHAT = {"num_procs", "master_port", "hostfile", "master_addr", "checkpoint", "verbose"}


def n_outputs(transform: dict) -> int:
    """The model's outputs: one per class clean saw (not only those a split happens to hold), or one value."""
    return 1 if transform.get("task") == "regression" else len(transform["classes"])


def model_config(params: Train, schema: pa.Schema, n_features: int, n_outputs: int) -> dict:
    """The model's config dict (saved in the weights file's metadata) from params and the data's shape."""
    shape, vocab = image_shape_of(schema), tokens_of(schema)
    section = getattr(params, params.model).model_dump()
    if params.model == "cnn":
        return {"image_shape": list(shape), "n_outputs": n_outputs, **section}
    config = {"n_features": n_features, "n_outputs": n_outputs, **section}
    if params.model in ("rnn", "transformer"):
        default = n_features if vocab else shape[0] if shape else n_features  # a token, a row, a value per step
        config |= {"seq_len": section["seq_len"] or default, "vocab_size": vocab}
    return config


def shaping_code_hash() -> str:
    """SHA-256 of the source files in SHAPING_CODE, by path, in a fixed order."""
    files = sorted(f for part in SHAPING_CODE for f in ((ROOT / part).rglob("*.py") if (ROOT / part).is_dir()
                                                         else [ROOT / part]))
    return ckpt.fingerprint(*(f"{f.relative_to(ROOT)}:{sha256_file(f)}" for f in files))


def fingerprint(params: Train, splits: Path, parent_sha256: str | None = None,
                continual: Continual | None = None) -> str:
    """What a checkpoint must match to be resumed (the module docstring says what and why); a warm start's
    parent by its weights' sha256, not its spec (digits@prod moves); the continual strategy, its params and
    the replay buffer's files it reads (tasks/continual/strategies.py)."""
    parts = [params.model_dump_json(exclude=WHERE_NOT_WHAT),
             *(sha256_file(split_path(splits, s)) for s in ("train", "val")), shaping_code_hash(),
             *([parent_sha256] if parent_sha256 else []), *(fingerprint_parts(continual, splits) if continual else [])]
    if params.deepspeed_config:
        try:
            parts.append(sha256_file(params.deepspeed_config))
        except FileNotFoundError:
            raise InputError(f"{params.deepspeed_config}: train.deepspeed_config not found") from None
    return ckpt.fingerprint(*parts)


def run_dir(checkpoints: Path, key: str, world: int) -> Path:
    return checkpoints / f"{key}-w{world}"  # data order and optimizer partitions follow the world size


def write_run_record(folder: Path, key: str, cfg: dict, params: Train, mcfg: dict, world: int) -> None:

    write_json(folder / DS_CONFIG_FILE, cfg)  # usable as is with DeepSpeed's --deepspeed_config
    write_json(folder / RUN_FILE, {"fingerprint": key, "deepspeed": cfg, "model": params.model,
                                   "model_config": mcfg, "world_size": world})


def starting_point(params: Train, stage: int, checkpoints: Path, key: str,
                   world: int) -> tuple[Path | None, str | None, int | None]:
    """Where training starts (rank 0 decides): (run folder, tag, None) to resume this count's own run,
    (folder, tag, its process count) to continue another count's (reshard), (None, None, None) afresh."""
    own_dir = run_dir(checkpoints, key, world)
    other = reshard.to_continue(checkpoints, key, world, params.epochs) if params.checkpoint.reshard else None
    if other:
        if stage > 0:  # its optimizer state is cut into one part per old process
            reshard.to_universal(*other[:2])
        return other
    own = ckpt.newest_complete(own_dir)
    return (own_dir, own, None) if own else (None, None, None)


def resume(engine, folder: Path, tag: str, load_own) -> LoopState:
    """Load checkpoint `tag` of `folder`: the engine state and the loop's; load_own(tag folder) restores
    this rank's generators and returns its own counters."""
    try:
        path, shared = engine.load_checkpoint(str(folder), tag=tag)
        own = load_own(folder / tag)
    except Exception as e:  # files that check but do not load: say which, never train on them
        raise InputError(f"{folder / tag}: checkpoint cannot be loaded ({type(e).__name__}: {e}); "
                         f"move {folder} away to train from scratch") from None
    if path is None or shared is None:
        raise InputError(f"{folder / tag}: DeepSpeed found no checkpoint to load")
    return LoopState.restored(shared, own)


def write_model(engine, rank: int, model_path: Path, meta: dict) -> None:
    """Gather the (possibly ZeRO-3 partitioned) weights; rank 0 writes one fp32 safetensors file."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        if rank == 0:
            state = {k: v.detach().float().cpu().contiguous() for k, v in engine.module.state_dict().items()}
            bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
            if bad:
                raise NonFiniteLoss(f"train: non-finite values in {bad[:5]}; the model is not written")
            save_model_file(state, model_path, meta)


def save_model_file(state: dict, path: Path, meta: dict) -> None:
    """The model file: the same weights and metadata give the same bytes (canonical_header), and the last
    good model survives a crash here (written aside, then moved into place)."""
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
        canonical_header(tmp)


def canonical_header(path: Path) -> None:
    """Sort the metadata keys of a safetensors file's header, in place.

    Hand-written because safetensors keeps metadata in a Rust HashMap: the same weights and metadata come
    out with the keys in another order at each save (another file, another sha256, another version). The
    sorted header holds the same members, so it has the same length and is rewritten where it stands
    (padded with spaces, as safetensors pads it); the tensors' order and offsets are left as written."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None)
        canon = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | header
        text = json.dumps(canon, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # a JSON escape serde writes shorter than Python: the header cannot stay in place
            raise InputError(f"{path}: the safetensors header cannot be sorted in place ({len(text)} > {n} bytes)")
        f.seek(8)
        f.write(text.ljust(n))


def model_metadata(params: Train, mcfg: dict, key: str, folder: Path, best: str) -> dict:
    """What rebuilds the model (its name and config) and where it came from (fingerprint, run folder,
    checkpoint tag): strings fixed by the params, data and code, canonical JSON, no time and no path."""
    return {"model": params.model, "config": json.dumps(mcfg, sort_keys=True, separators=(",", ":")),
            "fingerprint": key, "run": folder.name, "checkpoint": best}


def prune_other_runs(checkpoints: Path, keep: str) -> None:
    """After a run completes, drop checkpoints of runs with other params or data."""
    for d in checkpoints.iterdir():
        if d.is_dir() and d.name != keep and (d / RUN_FILE).exists():
            shutil.rmtree(d)
