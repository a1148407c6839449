"""Benchmark: the train stage (DeepSpeed) against a plain PyTorch DDP loop, same model, data and ranks.

    python benchmarks/train_vs_ddp.py [--model cnn] [--epochs 8] [--batch-size 32] [--procs 2] [--zero-stage N]
                                      [--copies 4] [--repeat 5]

Prepares the digits once with the pipeline's own ingest, clean and augment
functions, then runs, one after the other on the same machine:

- the train stage as `dvc repro` runs it (`python -m tasks.train`: DeepSpeed's
  launcher, CPU ranks over gloo, ZeRO stage and checkpoints as in params.yaml;
  stage 0 there, DeepSpeed's data parallelism, the algorithm DDP runs;
  `--zero-stage 1` shows what sharding the optimizer state costs on top);
- a DDP loop started by torchrun: the same model (models.build with the same
  config), the same rows in the same order (tasks.train.epoch_order), the same
  AdamW (torch's, multi-tensor), learning rate, weight decay and gradient
  clipping, no checkpoints; BatchNorm statistics stay each rank's own, as in
  the stage (broadcast_buffers=False).

Each side reports the seconds of its training steps per epoch (validation and
checkpoints excluded) and its mean training loss per epoch; each runs --repeat
times, interleaved, and an epoch's time is its best over the repeats. Prints
both per epoch, the stage / DDP time ratio over the epochs after the first
(warm-up), the same ratio run by run (how noisy the machine was), and the
largest relative difference between the two loss curves. Target: at most 5%
slower (ratio <= 1.05), with equal losses.

The training rows are the digits with --copies augmented copies each (4: 99
steps an epoch a rank). With params.yaml's one copy an epoch is 39 steps,
0.2 s, and one descheduled rank on a shared 2-core machine moves the ratio by
tens of percent either way.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(work: Path, copies: int) -> Path:
    """The digits through ingest, clean and augment (default params but `copies` augmented copies of each
    training row), and a params.yaml for the stage."""
    from tasks.augment import augment
    from tasks.clean import clean
    from tasks.ingest import ingest
    from tasks.params import load_params

    p = load_params(ROOT / "params.yaml")
    paths = {k: str(work / v) for k, v in p.paths.model_dump(mode="json").items()}
    d = {k: Path(v) for k, v in paths.items()}
    ingest(p.ingest, p.contract, d["raw"], d["raw_manifest"], d["contract_report"])
    clean(p.clean, d["raw"], d["raw_manifest"], d["clean"], d["transform"], d["clean_report"])
    augment(p.augment.model_copy(update={"copies": copies}), d["clean"], d["transform"], d["splits"])
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["paths"] = paths
    params["augment"]["copies"] = copies
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return work


def run_stage(work: Path, args) -> list[dict]:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"] |= {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
                        "num_procs": args.procs, "master_port": 29890}
    if args.zero_stage is not None:
        params["train"]["zero_stage"] = args.zero_stage
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = os.environ | {"PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    shutil.rmtree(params["paths"]["checkpoints"], ignore_errors=True)  # train from scratch, not resume
    subprocess.run([sys.executable, "-m", "tasks.train"], cwd=work, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return json.loads(Path(params["paths"]["train_history"]).read_text())


def run_ddp(work: Path, args) -> list[dict]:
    out = work / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.procs}", "--master_port=29891",
           __file__, "--worker", str(work), "--model", args.model, "--epochs", str(args.epochs),
           "--batch-size", str(args.batch_size), "--out", str(out)]
    subprocess.run(cmd, cwd=work, env=os.environ | {"PYTHONPATH": str(ROOT)}, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def ddp_worker(work: Path, args) -> None:
    """One DDP rank: the stage's model, data order and optimizer settings, written the plain way."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from models import build
    from tasks.params import load_params
    from tasks.train import epoch_order, load_split, model_config

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    p = load_params(work / "params.yaml")
    t = p.train.model_copy(update={"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size})
    x, y, schema = load_split(p.paths.splits / "train.parquet")
    torch.manual_seed(t.seed)
    # broadcast_buffers=False: the stage's engine leaves each rank its own BatchNorm statistics, so DDP does not
    # send rank 0's before every forward either (the same arithmetic, and one collective fewer for the baseline)
    warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated")  # its successor still syncs at init
    model = DDP(build(t.model, model_config(t, schema, x.shape[1], int(y.max()) + 1)), broadcast_buffers=False)
    opt = torch.optim.AdamW(model.parameters(), lr=t.optimizer.lr, weight_decay=t.optimizer.weight_decay,
                            betas=t.optimizer.betas, foreach=True)  # the stage's multi-tensor AdamW
    torch.manual_seed(t.seed + 1 + rank)
    history = []
    for epoch in range(1, t.epochs + 1):
        order = epoch_order(len(x), t.seed, epoch, rank, world, t.batch_size)
        total, started = torch.zeros(2, dtype=torch.float64), time.perf_counter()
        for idx in order:
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip, foreach=True)
            opt.step()
            total += torch.tensor([loss.item(), 1.0], dtype=torch.float64)
        seconds = time.perf_counter() - started
        dist.all_reduce(total)
        history.append({"epoch": epoch, "train_loss": (total[0] / total[1]).item(), "seconds": seconds})
    if rank == 0:
        Path(args.out).write_text(json.dumps(history))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["mlp", "cnn", "rnn", "transformer"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--zero-stage", type=int, choices=range(4),
                    help="the stage's train.zero_stage (default: params.yaml's); DDP shards nothing")
    ap.add_argument("--copies", type=int, default=4, help="augmented copies of each training row (params.yaml: 1); "
                    "more rows make epochs long enough to time on a busy machine")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each side, interleaved; best time per epoch")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return ddp_worker(args.worker, args)

    with tempfile.TemporaryDirectory() as tmp:
        work = prepare(Path(tmp), args.copies)
        if args.zero_stage is None:
            args.zero_stage = yaml.safe_load((work / "params.yaml").read_text())["train"]["zero_stage"]
        runs = [(run_stage(work, args), run_ddp(work, args)) for _ in range(args.repeat)]  # interleaved
    # each epoch's best time over the repeats (the machine's noise only ever adds); losses are identical
    stage = [min(epochs, key=lambda e: e["seconds"]) for epochs in zip(*[r[0] for r in runs])]
    ddp = [min(epochs, key=lambda e: e["seconds"]) for epochs in zip(*[r[1] for r in runs])]

    print(f"\n{args.model}, digits ({args.procs} CPU ranks over gloo, batch {args.batch_size} a rank, "
          f"{os.cpu_count()} cores; the stage with ZeRO stage {args.zero_stage})")
    print(f"{'epoch':>5}{'stage s':>10}{'DDP s':>10}{'ratio':>8}{'stage loss':>12}{'DDP loss':>12}")
    for s, d in zip(stage, ddp):
        print(f"{s['epoch']:>5}{s['seconds']:10.3f}{d['seconds']:10.3f}{s['seconds'] / d['seconds']:8.3f}"
              f"{s['train_loss']:12.5f}{d['train_loss']:12.5f}")
    warm = slice(1, None) if len(stage) > 1 else slice(None)
    ratio = sum(s["seconds"] for s in stage[warm]) / sum(d["seconds"] for d in ddp[warm])
    loss_diff = max(abs(s["train_loss"] - d["train_loss"]) / abs(d["train_loss"]) for s, d in zip(stage, ddp))
    per_run = sorted(sum(e["seconds"] for e in s[warm]) / sum(e["seconds"] for e in d[warm]) for s, d in runs)
    verdict = "met" if ratio <= 1.05 else "NOT met"
    print(f"\nstage / DDP time per epoch (epochs 2.., each epoch's best of {args.repeat} runs): {ratio:.3f}  "
          f"target <= 1.05: {verdict}")
    print(f"the same ratio run by run (noise on this machine): {' '.join(f'{r:.3f}' for r in per_run)}")
    print(f"largest relative loss difference: {loss_diff:.2e}")


if __name__ == "__main__":
    main()
