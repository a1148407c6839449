"""train: an explicit training loop over a DeepSpeed engine.

    python -m tasks.train                          # what `dvc repro train` runs
    deepspeed --num_gpus 2 --module tasks.train    # the worker side, by hand

`python -m tasks.train` checks params and data, then starts DeepSpeed's
launcher, which runs this module once per rank: one rank per visible GPU, or
`train.num_procs` CPU ranks over gloo when there is none. Every epoch ends
with a DeepSpeed checkpoint in a folder that DVC keeps across reruns
(`persist: true`); a rerun with the same params and data resumes from the
latest one. The final weights are gathered and saved as one safetensors file.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset
from tqdm import tqdm

from tasks.errors import InputError, run_main
from tasks.params import Params, Train, load_params
from tasks.tables import (
    LABEL,
    atomic_path,
    feature_names,
    image_shape_of,
    read_json,
    read_model_table,
    sha256_file,
    write_json,
)

RUN_FILE = "run.json"  # beside the checkpoints: fingerprint, DeepSpeed config, model config


def ds_config(params: Train, world_size: int) -> dict:
    """The DeepSpeed config, derived from the train params (never written by hand)."""
    return {
        "train_micro_batch_size_per_gpu": params.batch_size,
        "gradient_accumulation_steps": params.grad_accum,
        "train_batch_size": params.batch_size * params.grad_accum * world_size,
        "gradient_clipping": params.grad_clip,
        "optimizer": {"type": "AdamW", "params": {
            "lr": params.lr, "weight_decay": params.weight_decay, "torch_adam": True}},
        "zero_optimization": {"stage": params.zero_stage},
        "bf16": {"enabled": params.precision == "bf16"},
        "fp16": {"enabled": params.precision == "fp16"},
        "seed": params.seed,
        "steps_per_print": 10**9,  # progress is shown by tqdm, per epoch
    }


def model_config(params: Train, n_features: int, n_classes: int, image_shape) -> dict:
    if params.model == "cnn":
        return {"image_shape": list(image_shape), "n_classes": n_classes,
                "channels": list(params.cnn.channels), "dropout": params.cnn.dropout}
    return {"n_features": n_features, "n_classes": n_classes,
            "hidden": list(params.mlp.hidden), "dropout": params.mlp.dropout}


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor, pa.Schema]:
    table = read_model_table(path)
    x = np.column_stack([table[c].to_numpy() for c in feature_names(table.schema)])
    return torch.from_numpy(x), torch.from_numpy(table[LABEL].to_numpy().copy()), table.schema


def fingerprint(params: Train, splits: Path, world_size: int) -> str:
    """What a checkpoint must match to be resumed: params, data and world size."""
    h = hashlib.sha256(params.model_dump_json().encode())
    for name in ("train.parquet", "val.parquet"):
        h.update(sha256_file(splits / name).encode())
    h.update(str(world_size).encode())
    return h.hexdigest()[:16]


@torch.no_grad()
def evaluate_split(engine, x: torch.Tensor, y: torch.Tensor, dtype) -> tuple[float, float]:
    engine.eval()
    logits = torch.cat([engine(xb.to(engine.device, dtype)).float() for xb in x.split(1024)])
    loss = F.cross_entropy(logits, y.to(logits.device)).item()
    acc = (logits.argmax(1).cpu() == y).float().mean().item()
    return loss, acc


def resume(engine, run_dir: Path) -> tuple[int, list]:
    """Load the latest checkpoint of this run, if any: (last finished epoch, history)."""
    if not (run_dir / "latest").exists():
        return 0, []
    tag = (run_dir / "latest").read_text().strip()
    try:
        path, state = engine.load_checkpoint(str(run_dir))
    except Exception as e:  # truncated or foreign files: say which, never train on them
        raise InputError(f"{run_dir}/{tag}: checkpoint cannot be loaded ({type(e).__name__}: {e}); "
                         f"move {run_dir} away to train from scratch") from None
    if path is None or state is None:
        raise InputError(f"{run_dir}/{tag}: checkpoint named by 'latest' could not be loaded")
    return state["epoch"], state["history"]


def train(params: Train, splits: Path, checkpoints: Path, model_path: Path, history_path: Path) -> dict:
    """Run on every rank (started by DeepSpeed's launcher); rank 0 writes the files."""
    import deepspeed
    import torch.distributed as dist

    from models import build

    deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(params.seed)
    x_train, y_train, schema = load_split(splits / "train.parquet")
    x_val, y_val, _ = load_split(splits / "val.parquet")
    n_classes = int(max(y_train.max(), y_val.max())) + 1
    mcfg = model_config(params, x_train.shape[1], n_classes, image_shape_of(schema))
    cfg = ds_config(params, world)
    engine, *_ = deepspeed.initialize(model=build(params.model, mcfg), config=cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params.precision, torch.float32)

    fp = fingerprint(params, splits, world)
    run_dir = checkpoints / fp
    if rank == 0:
        write_json(run_dir / "ds_config.json", cfg)  # usable as is with DeepSpeed's --deepspeed_config
        write_json(run_dir / RUN_FILE, {"fingerprint": fp, "deepspeed": cfg, "model": params.model,
                                        "model_config": mcfg, "world_size": world})
    start, history = resume(engine, run_dir)
    if rank == 0 and start:
        print(f"train: resumed from checkpoint {run_dir}/epoch{start} (epoch {start} of {params.epochs})")

    # each rank sees its own shard of the training set, reshuffled every epoch
    sampler = DistributedSampler(TensorDataset(x_train, y_train), world, rank, shuffle=True, seed=params.seed)
    loader = DataLoader(sampler.dataset, batch_size=params.batch_size, sampler=sampler, drop_last=True)
    for epoch in range(start + 1, params.epochs + 1):
        sampler.set_epoch(epoch)
        engine.train()
        total = torch.zeros(2)  # sum of losses, number of batches
        for xb, yb in tqdm(loader, desc=f"epoch {epoch}/{params.epochs}", disable=rank != 0,
                           leave=False, file=sys.stdout):
            loss = F.cross_entropy(engine(xb.to(engine.device, dtype)).float(), yb.to(engine.device))
            engine.backward(loss)
            engine.step()
            total += torch.tensor([loss.item(), 1.0])
        dist.all_reduce(total)
        val_loss, val_acc = evaluate_split(engine, x_val, y_val, dtype)
        history.append({"epoch": epoch, "train_loss": total[0].item() / total[1].item(),
                        "val_loss": val_loss, "val_accuracy": val_acc})
        engine.save_checkpoint(str(run_dir), tag=f"epoch{epoch}",
                               client_state={"epoch": epoch, "history": history})
        if rank == 0:
            write_json(history_path, history)
            h = history[-1]
            print(f"train: epoch {epoch}/{params.epochs} train_loss {h['train_loss']:.4f} "
                  f"val_loss {h['val_loss']:.4f} val_accuracy {h['val_accuracy']:.4f}", flush=True)

    # gather the (possibly ZeRO-3 partitioned) weights; rank 0 writes one fp32 file
    with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
        if rank == 0:
            state = {k: v.detach().float().cpu().contiguous() for k, v in engine.module.state_dict().items()}
            meta = {"model": params.model, "config": json.dumps(mcfg), "fingerprint": fp}
            with atomic_path(model_path) as tmp:  # the last good model survives a crash here
                save_file(state, str(tmp), metadata=meta)
            write_json(history_path, history)
            _prune_other_runs(checkpoints, keep=fp)
    dist.barrier()
    return {"fingerprint": fp, "resumed_from_epoch": start, "epochs": params.epochs,
            "world_size": world, "val_accuracy": history[-1]["val_accuracy"] if history else None}


def _prune_other_runs(checkpoints: Path, keep: str) -> None:
    """After a run completes, drop checkpoints of runs with other params or data."""
    import shutil

    for d in checkpoints.iterdir():
        if d.is_dir() and d.name != keep and (d / RUN_FILE).exists():
            shutil.rmtree(d)


def world_size(p: Train) -> int:
    """How many ranks the launcher will start (see launcher_command)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else p.num_procs


def precheck(p: Params) -> None:
    """Everything that can be checked before any process starts or time is spent."""
    from tasks.contract import check_model_table

    n_classes = len(read_json(p.paths.transform, "clean transform")["classes"])
    tables = {s: read_model_table(p.paths.splits / f"{s}.parquet") for s in ("train", "val")}
    for s, table in tables.items():  # the boundary before any rank starts: finite features, known labels
        check_model_table(table, p.paths.splits / f"{s}.parquet", n_classes)
    val_only = set(tables["val"][LABEL].to_pylist()) - set(tables["train"][LABEL].to_pylist())
    if val_only:
        raise InputError(f"{p.paths.splits}: label(s) {sorted(val_only)} in val.parquet but not in train.parquet")
    train_rows = tables["train"].num_rows
    problems, world = [], world_size(p.train)
    if train_rows // world < p.train.batch_size:  # drop_last would leave no batch at all
        problems.append(f"train.batch_size {p.train.batch_size} is larger than the {train_rows // world} "
                        f"training rows each of the {world} ranks gets")
    if p.train.precision == "fp16" and not torch.cuda.is_available():
        problems.append("train.precision: fp16 needs a GPU here; use fp32 or bf16 on the CPU")
    if problems:
        raise InputError("; ".join(problems))


def launcher_command(p: Train) -> list[str]:
    """DeepSpeed's launcher: every visible GPU, else `num_procs` CPU ranks."""
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.runner", f"--master_port={p.master_port}"]
    if not torch.cuda.is_available():
        cmd.append(f"--num_gpus={p.num_procs}")
    return cmd + ["--no_local_rank", "--module", "tasks.train"]


def main() -> None:
    p = run_main(load_params)
    if "LOCAL_RANK" not in os.environ:  # the DVC side: check, then start the ranks
        run_main(lambda: precheck(p))
        sys.exit(subprocess.call(launcher_command(p.train), env=os.environ | {"PYTHONUNBUFFERED": "1"}))

    import torch.distributed as dist

    run_main(lambda: train(p.train, p.paths.splits, p.paths.checkpoints, p.paths.model, p.paths.train_history))
    sys.stdout.flush()
    sys.stderr.flush()
    dist.destroy_process_group()
    os._exit(0)  # ZeRO-3 over gloo can abort at interpreter exit after a good run


if __name__ == "__main__":
    main()
