"""Benchmark: where a training step's time goes under the DeepSpeed engine, against plain PyTorch.

    python benchmarks/engine_overhead.py [--model cnn] [--batch-size 32] [--steps 3000]

One process, a world of one, one thread, so nothing but the code is timed: the
train stage's engine (tasks.training.engine: params.yaml's DeepSpeed config, ZeRO stage
0, fp32) and the same model with torch's AdamW and clipping, stepped
alternately on the same batch of digits. Prints the median CPU time of each
part of a step (forward, backward, optimizer step) on each side and their
difference, and the engine's gradient all-reduce (DeepSpeed's bucketing,
flatten, all-reduce, average and copy-back) against the same work written
bare. This is what benchmarks/train_vs_ddp.py's ratio is made of on small
steps: a fixed cost per step, whatever the step computes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["mlp", "cnn", "rnn", "transformer"])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3000)
    args = ap.parse_args()

    import torch.distributed as dist
    from gpu_throughput import single_rank
    from train_vs_ddp import prepare

    from models import build
    from tasks.params import load_params
    from tasks.training.data import load_split
    from tasks.training.engine import build_engine, ds_config
    from tasks.training.run import model_config

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        p = load_params(prepare(Path(tmp), copies=0) / "params.yaml")
        x, y, schema = load_split(p.paths.splits / "train.parquet")
    t = p.train.model_copy(update={"model": args.model, "batch_size": args.batch_size})
    mcfg = model_config(t, schema, x.shape[1], int(y.max()) + 1)
    single_rank()
    torch.manual_seed(0)
    engine = build_engine(build(t.model, mcfg), ds_config(t, 1, 10**6))
    torch.manual_seed(0)
    model = build(t.model, mcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=t.optimizer.lr, weight_decay=t.optimizer.weight_decay,
                            betas=t.optimizer.betas, foreach=True)
    xb, yb = x[: args.batch_size], y[: args.batch_size]
    clock, parts = time.thread_time, {k: [] for k in ("forward", "backward", "step")}
    times = {"deepspeed": {k: [] for k in parts}, "torch": {k: [] for k in parts}}
    reduce_times = []
    timed_reduce = engine.allreduce_gradients

    def allreduce_gradients(*a, **kw):
        started = clock()
        timed_reduce(*a, **kw)
        reduce_times.append(clock() - started)

    engine.allreduce_gradients = allreduce_gradients
    for _ in range(args.steps):
        a = clock()
        loss = F.cross_entropy(engine(xb).float(), yb)
        b = clock()
        engine.backward(loss)
        c = clock()
        engine.step()
        d = clock()
        loss.item()
        for k, v in zip(parts, (b - a, c - b, d - c)):
            times["deepspeed"][k].append(v)
        a = clock()
        loss = F.cross_entropy(model(xb), yb)
        b = clock()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        c = clock()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip, foreach=True)
        opt.step()
        d = clock()
        loss.item()
        for k, v in zip(parts, (b - a, c - b, d - c)):
            times["torch"][k].append(v)

    warm = args.steps // 6

    def med(values: list[float]) -> float:
        return statistics.median(values[warm:]) * 1e6

    print(f"\n{args.model}, batch {args.batch_size}, one process, one thread: median CPU µs of {args.steps - warm} "
          f"steps")
    print(f"{'part':>10}{'DeepSpeed':>12}{'PyTorch':>10}{'extra':>8}")
    for k in parts:
        print(f"{k:>10}{med(times['deepspeed'][k]):12.0f}{med(times['torch'][k]):10.0f}"
              f"{med(times['deepspeed'][k]) - med(times['torch'][k]):8.0f}")
    total = {side: sum(med(v) for v in times[side].values()) for side in times}
    print(f"{'total':>10}{total['deepspeed']:12.0f}{total['torch']:10.0f}{total['deepspeed'] - total['torch']:8.0f}"
          f"   ratio {total['deepspeed'] / total['torch']:.2f}")

    grads = [torch.randn_like(q) for q in model.parameters()]
    bare = []
    for _ in range(args.steps):
        started = clock()
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.mul_(1.0 / dist.get_world_size())
        for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            g.copy_(synced)
        bare.append(clock() - started)
    print(f"\ngradient all-reduce of {len(grads)} tensors ({sum(g.numel() for g in grads):,} values): DeepSpeed's "
          f"{med(reduce_times):.0f} µs, the same work written bare {med(bare):.0f} µs")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
