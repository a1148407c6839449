"""Benchmark: the train stage (DeepSpeed) against what a user would pick instead: a plain PyTorch DDP loop and
PyTorch Lightning's Trainer, same model, data and ranks; per epoch and for the whole run, start-up included.

    python benchmarks/train_vs_ddp.py [--model cnn] [--epochs 8] [--batch-size 32] [--procs 2] [--zero-stage N]
                                      [--copies 4] [--repeat 5] [--lightning-defaults]

Prepares the digits once with the pipeline's own ingest, clean and augment
functions, then runs, one after the other on the same machine, each side as a
user launches it:

- the train stage as `dvc repro` runs it (`python -m tasks.train`: DeepSpeed's
  launcher, CPU ranks over gloo, ZeRO stage, validation and checkpoints every
  epoch as in params.yaml; stage 0 there, DeepSpeed's data parallelism, the
  algorithm DDP runs; `--zero-stage 1` shows what sharding the optimizer state
  costs on top);
- a DDP loop started by torchrun: the same model (models.build with the same
  config), the same rows in the same order (tasks.training.data.epoch_order),
  the same AdamW (torch's, multi-tensor), learning rate, weight decay and
  gradient clipping, no validation, no checkpoints; BatchNorm statistics stay
  each rank's own, as in the stage (broadcast_buffers=False);
- Lightning's Trainer started by `python script.py` (it starts the other ranks
  itself): the same model, rows (a sampler yielding the stage's batches of
  each epoch, so use_distributed_sampler=False), order, AdamW, clipping (the
  Trainer's gradient_clip_val, by norm) and process count; the DDP strategy
  on the CPU accelerator over gloo with broadcast_buffers=False, and with what
  a user switches off when timing: checkpointing, the logger, the progress
  bar and the model summary. Its loss is what a user logs, `self.log(...,
  on_epoch=True, sync_dist=True)`: the mean over the batches and the ranks,
  the stage's mean. With a GPU, Lightning's DeepSpeed strategy at the stage's
  ZeRO stage (Lightning refuses DeepSpeed without one). `--lightning-defaults`
  adds a column with Lightning's defaults (strategy "ddp", which broadcasts
  the BatchNorm buffers before every forward, a CSV logger, a checkpoint each
  epoch, the progress bar), keeping only the stage's rows and order.

Each side reports the seconds of its training steps per epoch (validation and
checkpoints excluded) and its mean training loss per epoch; each runs --repeat
times, interleaved, and an epoch's time is its best over the repeats. Prints
the sides per epoch, the stage / DDP and stage / Lightning time ratios over the
epochs after the first (warm-up) and run by run (how noisy the machine was),
and the largest relative difference between the loss curves. Then the whole
run of each side, from process start to exit, and its fixed cost: the whole
run less its epochs' step time (start-up, imports, data, engine set-up, the
stage's validation and checkpoints, shutdown; benchmarks/startup.py breaks the
stage's down). Targets: per epoch within 5% of DDP where a step takes >= 10 ms
and never slower than Lightning; a fixed cost no larger than Lightning's.

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
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SIDES = {"stage": "stage", "ddp": "DDP", "lightning": "Lightning", "lightning-defaults": "L.defaults"}
RATIO = {"ddp": "st/DDP", "lightning": "st/Light", "lightning-defaults": "st/Ldef"}
LAUNCHED = {"stage": "python -m tasks.train", "ddp": "torchrun", "lightning": "python script.py",
            "lightning-defaults": "python script.py"}


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


def child_env(**extra: str) -> dict:
    """The project importable, and the venv's own tools first on PATH (as the tests have it): torch finds
    `ninja` there to check DeepSpeed's compiled op, and another ninja version rebuilds it (a minute)."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return os.environ | {"PYTHONPATH": str(ROOT), "PATH": path, "TQDM_DISABLE": "1"} | extra


def timed_run(cmd: list[str], cwd: Path, env: dict) -> float:
    """Wall seconds of a command from its start to its exit; its stderr shown only if it fails."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return wall


def free_port() -> int:
    """A port nothing listens on now: runs of this benchmark (or the tests) at the same time do not collide."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stage_params(work: Path, args) -> dict:
    params = yaml.safe_load((work / "params.yaml").read_text())
    params["train"] |= {"model": args.model, "epochs": args.epochs, "batch_size": args.batch_size,
                        "num_procs": args.procs, "master_port": free_port()}
    if args.zero_stage is not None:
        params["train"]["zero_stage"] = args.zero_stage
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return params


def run_stage(work: Path, args) -> tuple[list[dict], float]:
    params = stage_params(work, args)
    shutil.rmtree(params["paths"]["checkpoints"], ignore_errors=True)  # train from scratch, not resume
    wall = timed_run([sys.executable, "-m", "tasks.train"], work, child_env())
    return json.loads(Path(params["paths"]["train_history"]).read_text()), wall


def worker_args(side: str, work: Path, args, out: Path) -> list[str]:
    return [__file__, "--worker", side, "--work", str(work), "--model", args.model, "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--procs", str(args.procs), "--out", str(out)]


def run_ddp(work: Path, args) -> tuple[list[dict], float]:
    out = work / "ddp.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={args.procs}",
           f"--master_port={free_port()}", *worker_args("ddp", work, args, out)]  # torchrun
    wall = timed_run(cmd, work, child_env())
    return json.loads(out.read_text()), wall


def run_lightning(work: Path, args, side: str) -> tuple[list[dict], float]:
    out = work / f"{side}.json"
    wall = timed_run([sys.executable, *worker_args(side, work, args, out)], work, child_env())
    return json.loads(out.read_text()), wall


def best_epochs(runs: list[list[dict]]) -> list[dict]:
    """Each epoch's best time over the repeats (the machine's noise only ever adds); losses are identical."""
    return [min(epochs, key=lambda e: e["seconds"]) for epochs in zip(*runs)]


def warm_seconds(epochs: list[dict]) -> float:
    return sum(e["seconds"] for e in (epochs[1:] if len(epochs) > 1 else epochs))


def spread(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def report(results: dict[str, list[tuple[list[dict], float]]], args, steps: int) -> None:
    sides = list(results)
    best = {s: best_epochs([h for h, _ in results[s]]) for s in sides}
    others = [s for s in sides if s != "stage"]
    print(f"\n{args.model}, digits ({args.procs} {'GPU' if args.gpu else 'CPU'} ranks, batch {args.batch_size} a "
          f"rank, {steps} steps an epoch, {os.cpu_count()} cores; the stage with ZeRO stage {args.zero_stage})")
    print(f"seconds of training steps per epoch (each epoch's best of {args.repeat} runs), the stage's time over "
          f"each other side's, and the mean training loss")
    print(f"{'epoch':>5}" + "".join(f"{SIDES[s] + ' s':>13}" for s in sides)
          + "".join(f"{RATIO[s]:>9}" for s in others) + "".join(f"{SIDES[s] + ' loss':>16}" for s in sides))
    for i, rows in enumerate(zip(*best.values())):
        row = dict(zip(sides, rows))
        print(f"{i + 1:>5}" + "".join(f"{row[s]['seconds']:13.3f}" for s in sides)
              + "".join(f"{row['stage']['seconds'] / row[s]['seconds']:9.3f}" for s in others)
              + "".join(f"{row[s]['train_loss']:16.6f}" for s in sides))

    step_ms = warm_seconds(best["stage"]) / max(len(best["stage"]) - 1, 1) / steps * 1e3
    print(f"\nper epoch, epochs 2.. (the stage's step: {step_ms:.1f} ms)")
    for s in others:
        ratio = warm_seconds(best["stage"]) / warm_seconds(best[s])
        per_run = sorted(warm_seconds(a) / warm_seconds(b) for (a, _), (b, _) in zip(results["stage"], results[s]))
        target = {"ddp": ("<= 1.05 where a step takes >= 10 ms" + ("" if step_ms >= 10 else " (not binding here)"),
                          1.05),
                  "lightning": ("<= 1.00", 1.0)}.get(s)
        verdict = f"  target {target[0]}: {'met' if ratio <= target[1] else 'NOT met'}" if target else ""
        print(f"  stage / {SIDES[s]:<10} {ratio:.3f}{verdict}")
        print(f"  {'':<10}run by run {' '.join(f'{r:.3f}' for r in per_run)}")
    diffs = [(f"{SIDES[a]} vs {SIDES[b]}", max(abs(e["train_loss"] - f["train_loss"]) / abs(f["train_loss"])
                                               for e, f in zip(best[a], best[b])))
             for i, a in enumerate(sides) for b in sides[i + 1:]]
    print("largest relative loss difference: " + ", ".join(f"{name} {d:.1e}" for name, d in diffs))

    print(f"\nthe whole run, from process start to exit, {args.epochs} epochs (best of {args.repeat} runs, and the "
          f"spread); fixed cost: the whole run less its epochs' step time")
    print(f"{'side':<33}{'whole s':>9}{'spread':>13}{'epochs s':>10}{'fixed s':>9}{'spread':>13}")
    whole, fixed = {}, {}
    for s in sides:
        walls = [w for _, w in results[s]]
        fixes = [w - sum(e["seconds"] for e in h) for h, w in results[s]]
        whole[s], fixed[s] = min(walls), min(fixes)
        print(f"{SIDES[s] + ' (' + LAUNCHED[s] + ')':<33}{whole[s]:9.2f}{spread(walls):>13}"
              f"{sum(e['seconds'] for e in best[s]):10.2f}{fixed[s]:9.2f}{spread(fixes):>13}")
    for s in others:
        verdict = f"  target <= 1.00: {'met' if fixed['stage'] <= fixed[s] else 'NOT met'}" if s == "lightning" else ""
        print(f"  stage / {SIDES[s]:<10} whole run {whole['stage'] / whole[s]:.2f}, fixed cost "
              f"{fixed['stage'] / fixed[s]:.2f} ({fixed['stage'] - fixed[s]:+.2f} s){verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["mlp", "cnn", "rnn", "transformer"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2, help="CPU ranks (with GPUs: every visible GPU, as the stage)")
    ap.add_argument("--zero-stage", type=int, choices=range(4),
                    help="the stage's train.zero_stage (default: params.yaml's); DDP shards nothing")
    ap.add_argument("--copies", type=int, default=4, help="augmented copies of each training row (params.yaml: 1); "
                    "more rows make epochs long enough to time on a busy machine")
    ap.add_argument("--repeat", type=int, default=5, help="runs of each side, interleaved; best time per epoch")
    ap.add_argument("--lightning-defaults", action="store_true",
                    help="also run Lightning with its defaults (DDP buffer broadcast, logger, checkpoints, bar)")
    ap.add_argument("--worker", choices=[s for s in SIDES if s != "stage"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from train_workers import ddp_worker, lightning_worker  # beside this file (sys.path[0])

    if args.worker == "ddp":
        return ddp_worker(args.work, args)
    if args.worker:
        return lightning_worker(args.work, args, defaults=args.worker == "lightning-defaults")

    import torch

    args.gpu = torch.cuda.is_available()
    if args.gpu:
        args.procs = torch.cuda.device_count()  # the stage's launcher takes every visible GPU
    sides = ["stage", "ddp", "lightning"] + (["lightning-defaults"] if args.lightning_defaults else [])
    with tempfile.TemporaryDirectory() as tmp:
        work = prepare(Path(tmp), args.copies)
        params = stage_params(work, args)
        if args.zero_stage is None:
            args.zero_stage = params["train"]["zero_stage"]
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(Path(params["paths"]["splits"]) / "train.parquet").metadata.num_rows
        results = {s: [] for s in sides}
        run = {"stage": lambda: run_stage(work, args), "ddp": lambda: run_ddp(work, args)}
        for _ in range(args.repeat):  # interleaved
            for s in sides:
                results[s].append(run[s]() if s in run else run_lightning(work, args, s))
    report(results, args, rows // args.procs // args.batch_size)


if __name__ == "__main__":
    main()
