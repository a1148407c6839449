"""The sides of benchmarks/train_vs_ddp.py that are not the stage: a DDP rank and Lightning's Trainer.

    python benchmarks/train_vs_ddp.py --worker ddp --work DIR ...   # what torchrun runs on every rank
    python benchmarks/train_vs_ddp.py --worker lightning --work DIR ...

Each trains what the stage trains (the_run: params, rows, model config) in the
stage's data order, and writes its epochs (seconds of steps, mean loss) as JSON.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path


def the_run(work: Path, args):
    """What every side trains: the params, the training rows, the model's config."""
    import torch

    from tasks.data.tables import read_json
    from tasks.files import split_path
    from tasks.params import load_params
    from tasks.training.data import load_split
    from tasks.training.run import model_config, n_outputs

    p = load_params(work / "params.yaml")
    t = p.train.model_copy(update={"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size})
    x, y, schema = load_split(split_path(p.paths.splits, "train"))
    torch.manual_seed(t.seed)  # the same initial weights on every rank, as in the stage
    mcfg = model_config(t, schema, x.shape[1], n_outputs(read_json(p.paths.transform, "clean transform")))
    return t, x, y, mcfg


def ddp_worker(work: Path, args) -> None:
    """One DDP rank: the stage's model, data order and optimizer settings, written the plain way."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from models import build
    from tasks.training.data import epoch_order

    gpu = torch.cuda.is_available()
    dist.init_process_group("nccl" if gpu else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if gpu else torch.device("cpu")
    t, x, y, mcfg = the_run(work, args)
    # broadcast_buffers=False: the stage's engine leaves each rank its own BatchNorm statistics, so DDP does not
    # send rank 0's before every forward either (the same arithmetic, and one collective fewer for the baseline)
    warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")  # its successor still syncs at init
    model = DDP(build(t.model, mcfg).to(device), device_ids=[device.index] if gpu else None, broadcast_buffers=False)
    opt = torch.optim.AdamW(model.parameters(), lr=t.optimizer.lr, weight_decay=t.optimizer.weight_decay,
                            betas=t.optimizer.betas, foreach=True)  # the stage's multi-tensor AdamW
    torch.manual_seed(t.seed + 1 + rank)
    history = []
    for epoch in range(1, t.epochs + 1):
        order = epoch_order(len(x), t.seed, epoch, rank, world, t.batch_size)
        total, started = torch.zeros(2, dtype=torch.float64), time.perf_counter()
        for idx in order:
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip, foreach=True)
            opt.step()
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        seconds = time.perf_counter() - started
        total = total.to(device)  # nccl reduces device tensors only
        dist.all_reduce(total)
        history.append({"epoch": epoch, "train_loss": (total[0] / total[1]).item(), "seconds": seconds})
    if rank == 0:
        Path(args.out).write_text(json.dumps(history))
    dist.destroy_process_group()


def lightning_worker(work: Path, args, defaults: bool) -> None:
    """Lightning's Trainer on the stage's model, rows, order and optimizer: a user's script (rank 0 starts
    the other ranks, which run this script again)."""
    import lightning as L
    import torch
    import torch.nn.functional as F
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
    from torch.utils.data import DataLoader, Dataset, Sampler

    from models import build
    from tasks.training.data import epoch_order
    from tasks.training.engine import ds_config, zero_stage

    t, x, y, mcfg = the_run(work, args)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # the rows are in memory already
    warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")

    class Rows(Dataset):
        def __init__(self):
            self.n = len(x)

        def __len__(self):
            return self.n

        def __getitem__(self, idx):  # idx: one batch of row indices (batch_size=None: no per-row collation)
            return x[idx], y[idx]

    class StageOrder(Sampler):
        """This rank's batches of each epoch in the stage's order; Lightning calls set_epoch (from 0)."""

        epoch = 1

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch + 1

        def __iter__(self):
            import torch.distributed as dist

            return iter(epoch_order(len(x), t.seed, self.epoch, dist.get_rank(), dist.get_world_size(),
                                    t.batch_size))

        def __len__(self):
            return len(x) // args.procs // t.batch_size

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = build(t.model, mcfg)

        def on_train_start(self):
            torch.manual_seed(t.seed + 1 + self.global_rank)  # the stage's dropout masks

        def training_step(self, batch, _):
            xb, yb = batch
            loss = F.cross_entropy(self.net(xb), yb)
            self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(yb))
            return loss

        def configure_optimizers(self):
            return torch.optim.AdamW(self.parameters(), lr=t.optimizer.lr, weight_decay=t.optimizer.weight_decay,
                                     betas=t.optimizer.betas, foreach=True)

    class Clock(L.Callback):
        """Each epoch's training seconds, and the logged mean loss (rank 0 writes them)."""

        def __init__(self):
            self.history: list[dict] = []

        def on_train_epoch_start(self, trainer, module):
            self.started = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            seconds = time.perf_counter() - self.started  # before the epoch's loss is synced across ranks
            self.history.append({"epoch": trainer.current_epoch + 1, "seconds": seconds,
                                 "train_loss": trainer.callback_metrics["train_loss"].item()})

    module = Module()  # the initial weights drawn right after the seed, as in the stage
    gpu = torch.cuda.is_available()
    if gpu:  # Lightning runs DeepSpeed only on a GPU; the optimizer is configure_optimizers'
        stage = zero_stage(ds_config(t, args.procs, 1))
        strategy = DeepSpeedStrategy(stage=stage, zero_optimization=stage > 0, logging_batch_size_per_gpu=t.batch_size)
    else:
        strategy = "ddp" if defaults else DDPStrategy(process_group_backend="gloo", broadcast_buffers=False)
    switched_off = {} if defaults else {"enable_checkpointing": False, "logger": False, "enable_progress_bar": False,
                                        "enable_model_summary": False}
    clock = Clock()
    trainer = L.Trainer(accelerator="gpu" if gpu else "cpu", devices=args.procs, strategy=strategy,
                        max_epochs=t.epochs, gradient_clip_val=t.grad_clip or None, gradient_clip_algorithm="norm",
                        use_distributed_sampler=False, num_sanity_val_steps=0, callbacks=[clock],
                        default_root_dir=work / "lightning", **switched_off)
    # generator: the loader's per-epoch base seed comes from its own generator, not the global one the
    # dropout masks come from (the stage draws nothing between steps)
    loader = DataLoader(Rows(), sampler=StageOrder(), batch_size=None, generator=torch.Generator())
    trainer.fit(module, loader)
    if trainer.global_rank == 0:
        Path(args.out).write_text(json.dumps(clock.history))
