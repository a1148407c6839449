"""Continue an unfinished run with another number of processes (train.checkpoint.reshard).

    python -m tasks.train     # with train.checkpoint.reshard: true and another train.num_procs (or GPUs)

A run's checkpoints live in `<fingerprint>-w<processes>/`: each epoch's rows are
cut into one shard per process, so an unfinished run cannot go on *exactly*
with another count. With `reshard`, it goes on *from where it stopped*:

- the engine state (weights, optimizer state, scheduler, step) comes back
  whole: under ZeRO stage 0 a checkpoint holds one copy of everything and loads
  as it is; under stages 1 and 2, which cut the optimizer state into a part per
  process, rank 0 first runs DeepSpeed's universal-checkpoint conversion
  (`deepspeed.checkpoint.ds_to_universal`: a file per parameter and moment) and
  the engine loads that, checked against it parameter by parameter, with the
  BatchNorm statistics (which DeepSpeed's universal loader leaves out) put back
  from it. Stage 3 also cuts the weights, and is refused with the reason;
- the rows the old processes had not reached in the interrupted epoch are
  shared out among the new ones; the epochs after it are cut for the new count;
- process r takes old process r's random generators (a new process seeds its
  own), and process 0 carries the old partial loss sums, so the epoch's mean
  loss counts every row once.

Not bit-exact against an uninterrupted run: the global batch follows the new
count (train.batch_size is per process). The checkpoints written afterwards
record the resharded epoch, so a crash later on resumes exactly.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from tasks.errors import InputError
from tasks.training import checkpoints as ckpt
from tasks.training.state import LoopState


def unfinished_other_world(checkpoints: Path, key: str, world: int, epochs: int) -> tuple[Path, str, int] | None:
    """The newest good checkpoint of an unfinished run of these params and data written by another number
    of processes: (its run folder, its tag, that number), or None."""
    found = []
    for other in sorted(checkpoints.glob(f"{key}-w*")):
        if other.name == f"{key}-w{world}":  # not hashed here: train checks this count's own run
            continue
        tag = ckpt.newest_complete(other, warn=lambda _: None)
        if tag is None:
            continue
        at = ckpt.record(other / tag)
        if at["resumes_at"]["epoch"] <= epochs:
            found.append((tag, other, at["world_size"]))  # tags sort by step
    if not found:
        return None
    tag, other, old_world = max(found)
    return other, tag, old_world


def to_continue(checkpoints: Path, key: str, world: int, epochs: int) -> tuple[Path, str, int] | None:
    """The unfinished other-count run that reshard would continue: one further along than this count's
    own run (whose tags, once it continued another, come after that one's)."""
    found = unfinished_other_world(checkpoints, key, world, epochs)
    if found is None:
        return None
    own = ckpt.newest_complete(checkpoints / f"{key}-w{world}", warn=lambda _: None)
    return found if own is None or found[1] > own else None


def hand_over(state: LoopState, old_world: int) -> LoopState:
    """The loop state a new count takes over: an interrupted epoch restarts at its first batch of the rows
    not reached, and the handover is recorded after any earlier ones of that epoch, so train cuts the epoch
    the same way on every later resume (data.epoch_batches)."""
    if not state.batch:  # stopped between epochs: the next one is cut for the new count anyway
        return state
    earlier = state.resharded["handovers"] if (state.resharded or {}).get("epoch") == state.epoch else []
    return replace(state, batch=0, resharded={"epoch": state.epoch, "handovers": earlier + [[old_world, state.batch]]})


def carry_best(source: Path, run_dir: Path, best_tag: str | None) -> None:
    """The best checkpoint so far into the new run's folder (rank 0): the final model is loaded from there,
    and the old folder goes once the run completes."""
    if best_tag and not (run_dir / best_tag).exists() and (source / best_tag).is_dir():
        shutil.copytree(source / best_tag, run_dir / best_tag)


def rest_of_epoch(order: torch.Tensor, done: int, rank: int, world: int) -> torch.Tensor:
    """This process's batches for the rest of an interrupted epoch.

    order: the old processes' (old_world, batches, batch) row indices for the epoch; done: the batches each
    had finished. The rows left, in the old order, are dealt out to `world` processes in whole batches."""
    old_world, _, batch = order.shape
    left = order[:, done:].reshape(old_world, -1).T.reshape(-1)  # interleaved, as the old shards were cut
    per_rank = len(left) // world // batch * batch
    return left[rank::world][:per_rank].view(-1, batch)


def load_generators_and_sums(tag_dir: Path, rank: int, old_world: int, seed: int) -> dict:
    """Process `rank`'s generators from old process `rank` (or a fresh seed, as a fresh run's); process 0
    gets every old process's partial loss sums, the others none."""
    if rank < old_world:
        ckpt.load_rank_state(tag_dir, rank)
    else:
        torch.manual_seed(seed + 1 + rank)
    if rank:
        return {"loss_sum": 0.0, "loss_n": 0, "term_sum": 0.0}
    loops = [ckpt.rank_loop(tag_dir, old) for old in range(old_world)]
    return {"loss_sum": sum(lp["loss_sum"] for lp in loops), "loss_n": sum(lp["loss_n"] for lp in loops),
            "term_sum": sum(lp.get("term_sum", 0.0) for lp in loops)}


def universal_tag(tag: str) -> str:
    return f"{tag}_universal"  # beside the tag it came from; not a step tag, so never resumed or pruned as one


def to_universal(source: Path, tag: str) -> None:
    """DeepSpeed's universal-checkpoint conversion of a ZeRO 1/2 checkpoint (rank 0, before any engine is
    built), into a temporary folder renamed when whole."""
    out, tmp = source / universal_tag(tag), source / f".{universal_tag(tag)}.partial"
    for old in (out, tmp):
        shutil.rmtree(old, ignore_errors=True)
    res = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                          str(source / tag), "--output_folder", str(tmp), "--num_extract_workers", "1",
                          "--num_merge_workers", "1", "--inject_missing_state"], capture_output=True, text=True)
    if res.returncode:
        raise InputError(f"{source / tag}: DeepSpeed's universal-checkpoint conversion failed: "
                         f"{(res.stderr or res.stdout).strip().splitlines()[-1:]}; set train.num_procs back to "
                         f"the count that wrote it to resume it")
    tmp.rename(out)


def universal_loading(cfg: dict) -> dict:
    """The engine config for loading a universal checkpoint (not saved: the run's own resumes are not)."""
    return cfg | {"checkpoint": {**cfg.get("checkpoint", {}), "load_universal": True}}


def check_universal_load(engine, folder: Path) -> tuple[int, int]:
    """After engine.load_checkpoint of a universal checkpoint: every parameter must equal its converted file
    (never train on a silently skipped one); BatchNorm statistics and other buffers, which DeepSpeed's
    universal loader leaves as they were, come from their files. Then the engine loads ordinary
    checkpoints again (its own, the best one). Returns (parameters checked, buffers restored)."""
    def saved(name: str) -> torch.Tensor:
        try:
            return torch.load(folder / "zero" / name / "fp32.pt", map_location="cpu", weights_only=True)["param"]
        except FileNotFoundError:
            raise InputError(f"{folder}: the universal checkpoint has no {name}; set train.num_procs back to the "
                             f"count that wrote it to resume it") from None

    params = 0
    for name, p in engine.module.named_parameters():
        if not torch.equal(p.detach().cpu(), saved(name).view_as(p).to(p.dtype)):
            raise InputError(f"{folder}: parameter {name} did not load from the universal checkpoint; train.num_procs "
                             f"back to the count that wrote it resumes it")
        params += 1
    buffers = 0
    with torch.no_grad():
        for name, b in engine.module.named_buffers():
            if (folder / "zero" / name / "fp32.pt").is_file():
                b.copy_(saved(name).view_as(b))
                buffers += 1
    engine._config.load_universal_checkpoint = False  # DeepSpeed reads this flag at every load_checkpoint
    return params, buffers
