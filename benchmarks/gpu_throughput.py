"""Benchmark (GPU): the train stage's DeepSpeed engine at GPT-2-small size, and its CNN against raw PyTorch.

    python benchmarks/gpu_throughput.py                   # on a machine with a CUDA GPU
    python benchmarks/gpu_throughput.py --peak-tflops 989 # the GPU's dense bf16 peak, if not recognised
    python benchmarks/gpu_throughput.py --smoke           # a tiny run on the CPU: checks the script itself

Two measurements, one process, one GPU (world size 1):

1. The project's Transformer (models/transformer.py) at roughly GPT-2-small
   size (12 layers, d_model 768, 12 heads, a 50,257-token vocabulary, 1,024
   tokens a row: about 124M parameters) trained in bf16 by a DeepSpeed engine
   built as the train stage builds it (tasks.training.engine, from a Train
   params object, AdamW, clipping, ZeRO stage as in params.yaml), with the
   stage's step (forward, loss, engine.backward, engine.step, loss.item()).
   It prints tokens per second and the model-FLOPs utilisation: the FLOPs the
   model needs per token (6 per non-embedding parameter plus the attention's
   12 x layers x d_model x seq_len, as PaLM's appendix counts them) times the
   tokens per second, over the GPU's dense bf16 peak. Target: >= 40% on an H100.
2. The CNN of params.yaml on digits-shaped batches (params.yaml's batch size),
   fp32: ms per step of the DeepSpeed engine against a raw PyTorch loop (the
   same model, AdamW and clipping, no engine), interleaved in blocks.

The data are random token ids and pixels made on the device: this times the
training step, not the input pipeline. Steps after --warmup are timed with
CUDA synchronised at both ends.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# dense bf16 tensor-core peaks in TFLOP/s (vendor data sheets), matched against torch.cuda.get_device_name()
PEAKS = {"H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 989.0,
         "A100": 312.0, "L40S": 362.0, "A10G": 70.0}


def single_rank() -> None:
    """deepspeed.initialize without its launcher: the environment of a world of one (else it tries MPI)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})


def engine_for(model: torch.nn.Module, train, total_steps: int):
    """The engine as the train stage makes it (tasks.train.start), for a world of one."""
    from tasks.training.engine import build_engine, ds_config

    return build_engine(model, ds_config(train, 1, total_steps))


def timed(step, n: int, device: torch.device) -> float:
    """Seconds for n calls of step, the device synchronised at both ends."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    started = time.perf_counter()
    for _ in range(n):
        step()
    sync()
    return time.perf_counter() - started


def transformer_mfu(args, train, device: torch.device) -> None:
    from models import build
    from tasks.training.loss import loss_fn

    size = dict(d_model=args.d_model, heads=args.heads, layers=args.layers, ff_mult=4, dropout=0.1,
                activation="gelu", init="xavier")
    cfg = {"n_features": args.seq, "n_outputs": 2, "seq_len": args.seq, "vocab_size": args.vocab, **size}
    t = train.model_copy(update={"model": "transformer", "precision": "bf16", "batch_size": args.batch,
                                 "transformer": train.transformer.model_copy(update=size)})
    torch.manual_seed(0)
    model = build("transformer", cfg)
    n_params = sum(p.numel() for p in model.parameters())
    n_embed = model.input.proj.weight.numel() + model.position.numel()
    engine = engine_for(model, t, args.warmup + args.steps)
    # token ids stay float32 (exact below 2**24), as the stage feeds them; the labels are class indices
    x = torch.randint(1, args.vocab, (args.batch, args.seq), device=device).float()
    y = torch.randint(0, 2, (args.batch,), device=device)

    def step():  # the stage's step (tasks/train.py)
        loss = loss_fn(engine(x).float(), y, t)
        engine.backward(loss)
        engine.step()
        loss.item()

    timed(step, args.warmup, device)
    seconds = timed(step, args.steps, device)
    tokens_per_s = args.batch * args.seq * args.steps / seconds
    flops_per_token = 6 * (n_params - n_embed) + 12 * args.layers * args.d_model * args.seq
    achieved = flops_per_token * tokens_per_s / 1e12
    print(f"\nTransformer {n_params / 1e6:.1f}M parameters ({(n_params - n_embed) / 1e6:.1f}M outside the "
          f"embeddings), bf16, ZeRO stage {t.zero_stage}, batch {args.batch} x {args.seq} tokens")
    print(f"  {seconds / args.steps * 1e3:.1f} ms a step, {tokens_per_s:,.0f} tokens/s, {achieved:.1f} TFLOP/s")
    if args.peak_tflops:
        mfu = achieved / args.peak_tflops
        print(f"  MFU {mfu:.1%} of {args.peak_tflops:.0f} TFLOP/s  target >= 40%: {'met' if mfu >= 0.4 else 'NOT met'}")
    else:
        print("  MFU: unknown peak for this device; give --peak-tflops")


def cnn_vs_torch(args, train, device: torch.device) -> None:
    from models import build
    from tasks.training.loss import loss_fn

    cfg = {"image_shape": [8, 8], "n_outputs": 10, **train.cnn.model_dump()}
    t = train.model_copy(update={"model": "cnn", "precision": "fp32"})
    x = torch.randn(t.batch_size, 64, device=device)
    y = torch.randint(0, 10, (t.batch_size,), device=device)
    torch.manual_seed(0)
    engine = engine_for(build("cnn", cfg), t, 10**6)
    torch.manual_seed(0)
    model = build("cnn", cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=t.optimizer.lr, weight_decay=t.optimizer.weight_decay,
                            betas=t.optimizer.betas)

    def ds_step():
        loss = loss_fn(engine(x).float(), y, t)
        engine.backward(loss)
        engine.step()
        loss.item()

    def torch_step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip, foreach=True)
        opt.step()
        loss.item()

    times = {"deepspeed": [], "torch": []}
    for step in (ds_step, torch_step):
        timed(step, args.warmup, device)
    for block in range(args.blocks):  # interleaved, so drift on the machine hits both alike
        order = [("deepspeed", ds_step), ("torch", torch_step)][:: 1 if block % 2 else -1]
        for name, step in order:
            times[name].append(timed(step, args.steps, device) / args.steps * 1e3)
    ds, raw = statistics.median(times["deepspeed"]), statistics.median(times["torch"])
    print(f"\nCNN (params.yaml), fp32, batch {t.batch_size} of 8x8 digits, median of {args.blocks} blocks of "
          f"{args.steps} steps")
    print(f"  DeepSpeed engine {ds:.3f} ms a step, raw PyTorch {raw:.3f} ms a step, ratio {ds / raw:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20, help="timed steps (a block, for the CNN)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--blocks", type=int, default=10, help="CNN: interleaved blocks of each side")
    ap.add_argument("--batch", type=int, default=16, help="Transformer rows a step")
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak (default: from its name)")
    ap.add_argument("--smoke", action="store_true", help="a tiny configuration on the CPU")
    args = ap.parse_args()

    from tasks.params import load_params

    train = load_params(ROOT / "params.yaml").train
    if args.smoke:
        args.__dict__.update(steps=2, warmup=1, blocks=2, batch=2, seq=32, layers=2, d_model=64, heads=4, vocab=500)
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        sys.exit("gpu_throughput: no CUDA GPU here; run on a GPU machine, or with --smoke to check the script")
    else:
        device = torch.device("cuda", 0)
        name = torch.cuda.get_device_name(device)
        args.peak_tflops = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
        print(f"{name}, torch {torch.__version__}, peak {args.peak_tflops} TFLOP/s bf16 dense")
    single_rank()
    transformer_mfu(args, train, device)
    cnn_vs_torch(args, train, device)


if __name__ == "__main__":
    main()
