"""train: an explicit training loop over a DeepSpeed engine, resumable to the exact step.

    python -m tasks.train                          # what `dvc repro train` runs
    deepspeed --num_gpus 2 --module tasks.train    # the worker side, by hand

`python -m tasks.train` checks params and data, then starts DeepSpeed's
launcher, which runs this module once per rank: one rank per visible GPU, or
`train.num_procs` CPU ranks over gloo when there is none.

Checkpoints (checkpoints.py) are written at the end of every epoch and every
`train.checkpoint.every_steps` optimizer steps, into a folder DVC keeps across
reruns. Each holds DeepSpeed's engine state (weights, optimizer, scheduler),
the loop's position (epoch, batch), the early-stopping state and every rank's
random generators, so a rerun after a crash continues exactly where the last
good checkpoint left off: the data order of an epoch is a function of the seed
and the epoch alone. SIGTERM (preemption) makes every rank write a checkpoint
before it exits. The final model is the best epoch's (early stopping), saved
as one safetensors file, never with a non-finite weight.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tqdm import tqdm

from tasks import checkpoints as ckpt
from tasks import reshard
from tasks.agreement import PREEMPTED, Agreement, NonFiniteLoss, Preemption
from tasks.engine import build_engine, ds_config, zero_stage
from tasks.errors import InputError, run_main
from tasks.params import Train, load_params
from tasks.tables import (
    LABEL,
    atomic_path,
    feature_names,
    image_shape_of,
    is_regression,
    read_model_table,
    sha256_file,
    tokens_of,
    write_json,
)

RUN_FILE = "run.json"  # beside the checkpoints: fingerprint, DeepSpeed config, model config


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


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor, pa.Schema]:
    table = read_model_table(path)
    x = np.column_stack([table[c].to_numpy() for c in feature_names(table.schema)]).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(table[LABEL].to_numpy().copy()), table.schema


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int, batch: int) -> torch.Tensor:
    """This rank's row indices for one epoch, in batches: a function of (seed, epoch) alone, so a resumed
    run sees exactly the order the interrupted one would have."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    per_rank = n // world // batch * batch  # every rank the same whole number of batches
    return order[rank::world][:per_rank].view(-1, batch)


def input_dtype(precision: str, schema: pa.Schema) -> torch.dtype:
    """The dtype the features are fed in: the training precision for values, float32 for token ids, which
    bf16 rounds into other tokens above 256 (1999 -> 2000) and fp16 above 2048; the model embeds them."""
    if tokens_of(schema):
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def epoch_batches(n: int, params: Train, epoch: int, rank: int, world: int, resharded: dict | None) -> torch.Tensor:
    """This rank's batches of `epoch`: epoch_order's; for an epoch that resharded runs took over midway
    (`handovers`: each count that ran it and the batches it had done), the rows not reached at the last
    handover, shared out among these processes (tasks/reshard.py)."""
    if not resharded or resharded["epoch"] != epoch:
        return epoch_order(n, params.seed, epoch, rank, world, params.batch_size)
    (first, done), *later = resharded["handovers"]
    order = torch.stack([epoch_order(n, params.seed, epoch, r, first, params.batch_size) for r in range(first)])
    for count, next_done in later:  # what each later count was dealt, and how far it got
        order = torch.stack([reshard.rest_of_epoch(order, done, r, count) for r in range(count)])
        done = next_done
    return reshard.rest_of_epoch(order, done, rank, world)


def l1_penalty(model: torch.nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices, kernels and embeddings (not biases or norms' scales)."""
    return sum(p.abs().sum() for name, p in model.named_parameters() if p.dim() > 1 and name.endswith("weight"))


def loss_fn(out: torch.Tensor, y: torch.Tensor, params: Train) -> torch.Tensor:
    """Cross-entropy over class logits, or MSE / MAE of the one output against the standardised target."""
    if params.loss == "cross_entropy":
        return F.cross_entropy(out, y, label_smoothing=params.label_smoothing)
    return (F.mse_loss if params.loss == "mse" else F.l1_loss)(out.squeeze(-1), y)


@torch.no_grad()
def evaluate_split(engine, x: torch.Tensor, y: torch.Tensor, dtype, params: Train) -> dict:
    from sklearn.metrics import f1_score

    engine.eval()
    out = torch.cat([engine(xb.to(engine.device, dtype)).float().cpu() for xb in x.split(1024)])
    engine.train()
    if params.loss != "cross_entropy":  # regression, in standardised target units
        err = out.squeeze(-1) - y
        return {"val_loss": loss_fn(out, y, params).item(), "val_mae": err.abs().mean().item(),
                "val_rmse": err.pow(2).mean().sqrt().item()}
    pred = out.argmax(1)
    return {"val_loss": F.cross_entropy(out, y).item(), "val_accuracy": (pred == y).float().mean().item(),
            "val_f1": float(f1_score(y.numpy(), pred.numpy(), average="macro", zero_division=0))}


def improved(value: float, best: float | None, metric: str, min_delta: float) -> bool:
    if best is None:
        return True
    lower_is_better = any(k in metric for k in ("loss", "mae", "rmse"))
    return value < best - min_delta if lower_is_better else value > best + min_delta


def fingerprint(params: Train, splits: Path) -> str:
    """What a checkpoint must match to be resumed: the params that shape training, and the data."""
    relevant = params.model_dump_json(exclude={"num_procs", "master_port", "hostfile", "master_addr", "checkpoint"})
    return ckpt.fingerprint(relevant, *(sha256_file(splits / f"{s}.parquet") for s in ("train", "val")))


def train(params: Train, splits: Path, checkpoints: Path, model_path: Path, history_path: Path,
          live_dir: Path) -> dict:
    """Run on every rank (started by DeepSpeed's launcher); rank 0 writes the shared files."""
    import deepspeed
    import torch.distributed as dist

    from models import build

    warnings.filterwarnings("ignore", "`torch.distributed.all_gather_into_tensor` is deprecated",
                            FutureWarning)  # DeepSpeed's ZeRO checkpointing, once per save
    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    preemption = Preemption()
    torch.manual_seed(params.seed)  # the same initial weights on every rank
    if params.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    x_train, y_train, schema = load_split(splits / "train.parquet")
    x_val, y_val, _ = load_split(splits / "val.parquet")
    n_outputs = 1 if is_regression(schema) else int(max(y_train.max(), y_val.max())) + 1
    mcfg = model_config(params, schema, x_train.shape[1], n_outputs)
    batches_per_epoch = len(x_train) // world // params.batch_size
    steps_per_epoch = max(batches_per_epoch // params.grad_accum, 1)
    cfg = ds_config(params, world, steps_per_epoch * params.epochs)
    fp = fingerprint(params, splits)
    run_dir = checkpoints / f"{fp}-w{world}"  # data order and optimizer partitions follow the world size
    stage = zero_stage(cfg)  # train.zero_stage, or a DeepSpeed JSON's
    start = [starting_point(params, stage, checkpoints, fp, world) if rank == 0 else None]
    dist.broadcast_object_list(start, src=0)  # every rank resumes from the checkpoint rank 0 chose
    source, tag, old_world = start[0]
    universal = old_world is not None and stage > 0  # another count's ZeRO 1/2 parts, re-cut
    model = build(params.model, mcfg)
    engine = build_engine(model, reshard.universal_loading(cfg) if universal else cfg)
    dtype = input_dtype(params.precision, schema)
    torch.manual_seed(params.seed + 1 + rank)  # dropout masks differ between ranks, repeat between runs
    state = {"epoch": 1, "batch": 0, "history": [], "best": None, "best_tag": None, "bad_epochs": 0,
             "resharded": None}
    loop = {"loss_sum": 0.0, "loss_n": 0}
    if rank == 0:
        write_json(run_dir / "ds_config.json", cfg)  # usable as is with DeepSpeed's --deepspeed_config
        write_json(run_dir / RUN_FILE, {"fingerprint": fp, "deepspeed": cfg, "model": params.model,
                                        "model_config": mcfg, "world_size": world})
    if tag and old_world is None:
        state, loop = resume(engine, source, tag, lambda d: ckpt.load_rank_state(d, rank))
        if rank == 0:
            print(f"train: resumed from {source / tag} (epoch {state['epoch']}, batch {state['batch']})")
    elif tag:  # an unfinished run of another process count, continued (tasks/reshard.py)
        state, loop = resume(engine, source, reshard.universal_tag(tag) if universal else tag,
                             lambda _: reshard.load_generators_and_sums(source / tag, rank, old_world, params.seed))
        if universal:
            checked, restored = reshard.check_universal_load(engine, source / reshard.universal_tag(tag))
            if rank == 0:
                print(f"train: loaded DeepSpeed's universal checkpoint of {source / tag}: {checked} parameters "
                      f"checked against it, {restored} buffers restored from it", flush=True)
        state = reshard.hand_over(state, old_world)
        if rank == 0:
            reshard.carry_best(source, run_dir, state["best_tag"])
            print(f"train: continuing {source / tag}, written by {old_world} processes, with {world} "
                  f"(train.checkpoint.reshard): epoch {state['epoch']}, the rows its processes had not reached "
                  f"shared out anew", flush=True)

    def save(reason: str) -> str:
        tag = ckpt.step_tag(engine.global_steps)
        for p in engine.module.parameters():  # NaN weights are never checkpointed
            if not torch.isfinite(p).all():
                raise NonFiniteLoss(f"train: non-finite weights at step {engine.global_steps}; nothing saved")
        if rank == 0:  # a checkpoint written again (after a resume) counts only once it is whole again
            (run_dir / tag / ckpt.MARKER).unlink(missing_ok=True)
        engine.save_checkpoint(str(run_dir), tag=tag, client_state=state, save_latest=False)
        ckpt.save_rank_state(run_dir / tag, rank, loop)
        dist.barrier()  # every rank's files are written
        if rank == 0:
            ckpt.mark_complete(run_dir / tag, {"world_size": world, "reason": reason,
                                               "resumes_at": {"epoch": state["epoch"], "batch": state["batch"]}})
            ckpt.prune(run_dir, params.checkpoint.keep_last, {state["best_tag"]} - {None})
        dist.barrier()
        return tag

    live = Live(live_dir, state["history"]) if rank == 0 else None
    agreed = Agreement(preemption, rank)
    stop_early = state["bad_epochs"] >= params.early_stopping.patience > 0
    for epoch in range(state["epoch"], params.epochs + 1):
        if stop_early:
            break
        order = epoch_batches(len(x_train), params, epoch, rank, world, state["resharded"])
        order = order[:len(order) // params.grad_accum * params.grad_accum]  # epochs end on an optimizer step
        started = time.perf_counter()
        bar = tqdm(total=len(order), initial=state["batch"], desc=f"epoch {epoch}/{params.epochs}",
                   disable=rank != 0, leave=False, file=sys.stdout)
        for b in range(state["batch"], len(order)):
            idx = order[b]
            out = engine(x_train[idx].to(engine.device, dtype)).float()
            loss = loss_fn(out, y_train[idx].to(engine.device), params)
            if params.optimizer.l1:
                loss = loss + params.optimizer.l1 * l1_penalty(engine.module)
            engine.backward(loss)
            engine.step()
            value = loss.item()
            loop["loss_sum"] += value
            loop["loss_n"] += 1
            state["batch"] = b + 1
            bar.update()
            agreed.post(value, f"epoch {epoch}, batch {b + 1}")
            boundary = (b + 1) % params.grad_accum == 0
            if agreed.stop and boundary:
                agreed.sync()
                tag = save("preempted")
                if rank == 0:
                    print(f"train: SIGTERM: checkpoint {run_dir / tag} written; rerun to resume", flush=True)
                return {"preempted": True}
            every = params.checkpoint.every_steps
            if every and boundary and engine.global_steps % every == 0 and b + 1 < len(order):
                agreed.sync()
                save("step")
        agreed.sync()
        bar.close()
        seconds = time.perf_counter() - started  # the training steps of this epoch (this start's share)

        totals = torch.tensor([loop["loss_sum"], loop["loss_n"]], dtype=torch.float64)
        dist.all_reduce(totals)
        metrics = [evaluate_split(engine, x_val, y_val, dtype, params)]
        # rank 0's figures decide for all: BatchNorm's running statistics are each rank's own (DeepSpeed does
        # not average them), and rank 0's are the ones its checkpoint and the model file keep
        dist.broadcast_object_list(metrics, src=0)
        entry = {"epoch": epoch, "train_loss": totals[0].item() / max(totals[1].item(), 1.0), **metrics[0],
                 "lr": engine.get_lr()[0], "seconds": seconds}
        state["history"].append(entry)
        es = params.early_stopping  # its metric fits the task: checked with the params
        better = improved(entry[es.metric], state["best"], es.metric, es.min_delta)
        state["bad_epochs"] = 0 if better else state["bad_epochs"] + 1
        state["epoch"], state["batch"] = epoch + 1, 0
        loop = {"loss_sum": 0.0, "loss_n": 0}
        stop_early = state["bad_epochs"] >= es.patience > 0
        if better:
            state["best"], state["best_tag"] = entry[es.metric], ckpt.step_tag(engine.global_steps)
        save("epoch")
        if rank == 0:
            live.log(entry)
            write_json(history_path, state["history"])
            print(f"train: epoch {epoch}/{params.epochs} " + " ".join(
                f"{k} {v:.4f}" for k, v in entry.items() if k != "epoch") + (" (best)" if better else ""),
                flush=True)
    if stop_early and rank == 0:
        print(f"train: early stop: {params.early_stopping.metric} did not improve for "
              f"{params.early_stopping.patience} epoch(s); best {state['best']:.4f} at {state['best_tag']}")

    best = state["best_tag"] or ckpt.step_tag(engine.global_steps)
    engine.load_checkpoint(str(run_dir), tag=best, load_module_only=True)  # the final model is the best one
    write_model(engine, rank, model_path, {"model": params.model, "config": json.dumps(mcfg), "fingerprint": fp,
                                           "run": run_dir.name, "checkpoint": best})
    if rank == 0:
        write_json(history_path, state["history"])
        _prune_other_runs(checkpoints, keep=run_dir.name)
    dist.barrier()
    return {"fingerprint": fp, "epochs_run": len(state["history"]), "best_checkpoint": best,
            "early_stopped": stop_early, "world_size": world}


def starting_point(params: Train, stage: int, checkpoints: Path, fp: str,
                   world: int) -> tuple[Path | None, str | None, int | None]:
    """Where training starts (rank 0 decides): (run folder, tag, None) to resume this count's own run,
    (folder, tag, its process count) to continue another count's (reshard), (None, None, None) afresh."""
    run_dir = checkpoints / f"{fp}-w{world}"
    other = reshard.to_continue(checkpoints, fp, world, params.epochs) if params.checkpoint.reshard else None
    if other:
        if stage > 0:  # its optimizer state is cut into one part per old process
            reshard.to_universal(*other[:2])
        return other
    own = ckpt.newest_complete(run_dir)
    return (run_dir, own, None) if own else (None, None, None)


def resume(engine, run_dir: Path, tag: str, load_loop) -> tuple[dict, dict]:
    """Load checkpoint `tag` of run_dir: engine state and loop position; load_loop(tag folder) restores
    this rank's generators and returns its loop counters."""
    try:
        path, state = engine.load_checkpoint(str(run_dir), tag=tag)
        loop = load_loop(run_dir / tag)
    except Exception as e:  # files that check but do not load: say which, never train on them
        raise InputError(f"{run_dir / tag}: checkpoint cannot be loaded ({type(e).__name__}: {e}); "
                         f"move {run_dir} away to train from scratch") from None
    if path is None or state is None:
        raise InputError(f"{run_dir / tag}: DeepSpeed found no checkpoint to load")
    keys = ("epoch", "batch", "history", "best", "best_tag", "bad_epochs", "resharded")
    return {k: state.get(k) for k in keys}, loop


def write_model(engine, rank: int, model_path: Path, meta: dict) -> None:
    """Gather the (possibly ZeRO-3 partitioned) weights; rank 0 writes one fp32 safetensors file."""
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        if rank == 0:
            state = {k: v.detach().float().cpu().contiguous() for k, v in engine.module.state_dict().items()}
            bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
            if bad:
                raise NonFiniteLoss(f"train: non-finite values in {bad[:5]}; the model is not written")
            with atomic_path(model_path) as tmp:  # the last good model survives a crash here
                save_file(state, str(tmp), metadata=meta)


class Live:
    """Per-epoch metrics through DVCLive (rank 0): `dvc plots show` draws them, `dvc exp show` lists the
    latest. The log is rewritten from the checkpoint's history on every start, so after a resume it
    holds exactly the epochs the model has seen."""

    def __init__(self, live_dir: Path, history: list[dict]):
        from dvclive import Live as DVCLive

        self.live = DVCLive(str(live_dir), resume=False, save_dvc_exp=False, dvcyaml=None, report=None)
        for entry in history:
            self.log(entry)

    def log(self, entry: dict) -> None:
        for k, v in entry.items():
            if k != "epoch":
                self.live.log_metric(k, v)
        self.live.next_step()


def _prune_other_runs(checkpoints: Path, keep: str) -> None:
    """After a run completes, drop checkpoints of runs with other params or data."""
    import shutil

    for d in checkpoints.iterdir():
        if d.is_dir() and d.name != keep and (d / RUN_FILE).exists():
            shutil.rmtree(d)


def main() -> None:
    p = run_main(load_params)
    if "LOCAL_RANK" not in os.environ:  # the DVC side: check, then start the ranks
        from tasks.launch import launch, launcher_command, precheck, threads_per_rank

        run_main(lambda: precheck(p))
        sys.exit(launch(launcher_command(p.train), threads_per_rank(p.train)))

    import torch.distributed as dist

    result = run_main(lambda: train(p.train, p.paths.splits, p.paths.checkpoints, p.paths.model,
                                    p.paths.train_history, p.paths.train_live))
    sys.stdout.flush()
    sys.stderr.flush()
    dist.destroy_process_group()
    os._exit(PREEMPTED if result.get("preempted") else 0)  # ZeRO-3 over gloo can abort at interpreter exit


if __name__ == "__main__":
    main()
