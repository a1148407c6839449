"""The train stage's launcher side: checks before any rank starts, DeepSpeed's launcher, signals.

    python -m tasks.train      # the DVC side runs precheck, then launch(launcher_command(...))

Everything here runs in the one process DVC starts, before and around the ranks:
it checks params, data, a warm start's parent and the continual strategy (so a
bad input costs no process start), builds the launcher's command (GPUs, CPU ranks, or several nodes through a hostfile),
gives CPU ranks their share of the cores, and passes SIGTERM on to the ranks.
DeepSpeed's start-up lines (its launcher's INFO log, the accelerator detection's
warning) stay out of the log unless train.verbose; the ranks' side of that is in
training/live.py.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from models import build
from tasks.continual import strategies
from tasks.data.tables import LABEL, feature_names, image_shape_of, read_json, read_model_table, tokens_of
from tasks.errors import InputError
from tasks.files import split_path
from tasks.params import Params, Train
from tasks.params.continual import NEW_ROWS_ONLY
from tasks.training.agreement import PREEMPTED
from tasks.training.engine import ds_config, zero_stage
from tasks.training.reshard import to_continue
from tasks.training.run import fingerprint, model_config, n_outputs

PORT_ENV = "DAGTRAIN_MASTER_PORT"  # overrides train.master_port without changing the params DVC tracks


def hosts(p: Train, env: dict | None = None) -> dict[str, list[int]]:
    """The machines and the device (or CPU rank) ids on each, as DeepSpeed's launcher takes them: the
    hostfile's `host slots=N` lines; else this machine: its visible GPUs (CUDA_VISIBLE_DEVICES respected,
    as DeepSpeed's runner does), or num_procs CPU ranks."""
    env = os.environ if env is None else env
    if p.hostfile:
        try:
            lines = [line.split("#")[0].split() for line in p.hostfile.read_text().splitlines()]
        except FileNotFoundError:  # DeepSpeed would quietly train on this machine alone
            raise InputError(f"{p.hostfile}: train.hostfile not found") from None
        try:
            slots = {w[0]: int(w[1].removeprefix("slots=")) for w in lines if w}
        except (IndexError, ValueError):
            slots = {}
        if not slots or any(n < 1 for n in slots.values()):
            raise InputError(f"{p.hostfile}: train.hostfile needs one 'host slots=N' line per machine")
        return {host: list(range(n)) for host, n in slots.items()}
    if not torch.cuda.is_available():
        return {"localhost": list(range(p.num_procs))}
    visible = env.get("CUDA_VISIBLE_DEVICES", "").strip()
    if not visible:
        return {"localhost": list(range(torch.cuda.device_count()))}
    try:
        return {"localhost": [int(d) for d in visible.split(",")]}
    except ValueError:  # DeepSpeed's launcher takes device indices only
        raise InputError(f"CUDA_VISIBLE_DEVICES={visible!r}: DeepSpeed's launcher needs device indices such as "
                         f"0,1 (not UUIDs or names)") from None


def world_size(p: Train) -> int:
    """How many ranks the launcher will start: every host's slots (see hosts)."""
    return sum(len(ids) for ids in hosts(p).values())


def precheck(p: Params) -> None:
    """Everything that can be checked before any process starts or time is spent."""
    from tasks.data.contract import check_model_table

    t = read_json(p.paths.transform, "clean transform")
    regression = t.get("task") == "regression"
    n_classes = None if regression else n_outputs(t)
    tables = {s: read_model_table(split_path(p.paths.splits, s)) for s in ("train", "val")}
    for s, table in tables.items():  # the boundary before any rank starts: finite features, known labels
        check_model_table(table, split_path(p.paths.splits, s), n_classes)
    if regression != (p.train.loss != "cross_entropy"):
        raise InputError(f"train.loss {p.train.loss!r} does not fit the data, prepared for "
                         f"{'regression' if regression else 'classification'} (ingest.task); rerun from ingest")
    val_only = set() if regression else set(tables["val"][LABEL].to_pylist()) - set(tables["train"][LABEL].to_pylist())
    if val_only and not (p.continual.strategy in NEW_ROWS_ONLY and p.train.init.from_):  # the parent's classes
        raise InputError(f"{p.paths.splits}: label(s) {sorted(val_only)} in val.parquet but not in train.parquet")
    train_rows = tables["train"].num_rows
    problems, world = [], world_size(p.train)
    if train_rows // world < p.train.batch_size:  # no whole batch at all
        problems.append(f"train.batch_size {p.train.batch_size} is larger than the {train_rows // world} "
                        f"training rows each of the {world} ranks gets")
    if p.train.precision == "fp16" and not torch.cuda.is_available():
        problems.append("train.precision: fp16 needs a GPU here; use fp32 or bf16 on the CPU")
    if p.train.precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        problems.append("train.precision: bf16 is not supported by this GPU; use fp16 or fp32")
    norm = getattr(p.train, p.train.model).model_dump().get("norm")
    if p.train.precision == "bf16" and not torch.cuda.is_available() and norm == "batch":
        problems.append(f"train.precision: bf16 on CPU ranks fails in BatchNorm (DeepSpeed keeps its statistics "
                        f"in fp32, which the CPU kernel refuses); set train.{p.train.model}.norm: layer or none, "
                        f"or train in fp32")
    if p.train.model == "cnn" and image_shape_of(tables["train"].schema) is None:
        problems.append("train.model: cnn needs images (set ingest.image_shape)")
    if tokens_of(tables["train"].schema) and p.train.model not in ("rnn", "transformer"):
        problems.append(f"train.model: {p.train.model} would read token ids as numbers; token sequences "
                        f"(augment.text.representation: sequence) need rnn or transformer")
    try:  # a shape that does not fit (seq_len, heads, image size) is named here, not in every rank
        x_width = len(feature_names(tables["train"].schema))
        child = build(p.train.model, model_config(p.train, tables["train"].schema, x_width, n_outputs(t)))
    except ValueError as e:
        problems.append(f"train.{p.train.model}: {e}")
    if problems:
        raise InputError("; ".join(problems))
    cfg = ds_config(p.train, world, 1)  # train.deepspeed_config: exists, parses, holds an object
    parent = check_warm_start(p.train, child, zero_stage(cfg), p.paths.parent)
    strategies.check(strategies.effective(p.continual, p.train, parent is not None), p.train, p.paths.splits,
                     zero_stage(cfg), tables["train"].schema)
    refuse_other_world(p.train, zero_stage(cfg), p.paths.checkpoints,
                       fingerprint(p.train, p.paths.splits, parent and parent["sha256"], p.continual), world)


def check_warm_start(p: Train, child: torch.nn.Module, stage: int, folder: Path = Path("parent_model")) -> dict | None:
    """train.init, before any rank starts: the parent is read and checked (sha256, safetensors, family, every
    tensor's shape), and so are its freeze patterns and unfreezing; returns the parent's identity."""
    if not p.init.from_:
        return None
    from tasks.training import init as warm

    parent = warm.read_fetched(folder, p.init)  # what the parent stage fetched, checked again
    if parent is None:  # a stage that holds no version yet (train.init.unassigned: scratch)
        return None
    warm.check_unfreeze(p.init, stage, p.precision)
    warm.check_fit(parent, p.model, child, p.init.head)
    warm.param_groups(child, p.init, p.optimizer.lr)  # freeze patterns that match, a head not frozen at random
    return parent.identity


def refuse_other_world(p: Train, stage: int, checkpoints: Path, key: str, world: int) -> None:
    """An unfinished run of the same params and data with another number of processes is not silently
    dropped: it cannot go on exactly with this many (each epoch's data order is cut into one shard per
    process, and ZeRO stages 1-3 the optimizer state). Say how to resume it, continue it (reshard) or start
    over; with train.checkpoint.reshard under ZeRO stages 0-2, let train continue it (reshard.py)."""
    found = to_continue(checkpoints, key, world, p.epochs)
    if found is None:  # none, or this count's own run is further along
        return
    other, tag, old = found
    if p.checkpoint.reshard and stage < 3:
        return
    if p.checkpoint.reshard:
        raise InputError(
            f"{other / tag}: train.checkpoint.reshard continues a run with another number of processes under ZeRO "
            f"stages 0-2; stage 3 also cuts the weights into one part per process, and its checkpoints (the best "
            f"one among them) load only into the count that wrote them. Set train.num_procs: {old} (or use as "
            f"many GPUs) to resume it, or delete {other} to train from scratch with {world}")
    raise InputError(
        f"{other / tag}: an unfinished run of these params and data, written by {old} processes; this run has "
        f"{world}. Each epoch's data order is cut into one shard per process (and ZeRO stages 1-3 cut the "
        f"optimizer state the same way), so it cannot continue exactly with {world}. Set train.num_procs: {old} "
        f"(or use as many GPUs) to resume it exactly, train.checkpoint.reshard: true to continue it with {world} "
        f"from where it stopped, or delete {other} to train from scratch with {world}")


def launcher_command(p: Train, env: dict | None = None) -> list[str]:
    """DeepSpeed's launcher for these params. Its per-node launcher (`deepspeed.launcher.launch`) starts
    this machine's ranks: every visible GPU, else `num_procs` CPU ranks; with train.hostfile and NODE_RANK
    set, this node's share of the hosts it lists. Only node 0 of a hostfile run without NODE_RANK goes
    through DeepSpeed's runner, which starts the per-node launcher on every host over ssh. On one machine
    the runner would only start the per-node launcher with the same arguments, for one more Python process
    importing torch and DeepSpeed before any rank starts (benchmarks/startup.py)."""
    env = os.environ if env is None else env
    module = ["--no_local_rank", "--module", "tasks.train"]
    port = int(env.get(PORT_ENV) or p.master_port)  # a search gives each concurrent trial a port of its own
    log_level = f"--log_level={'info' if p.verbose else 'warning'}"  # its INFO log: world info, spawned pids...
    if p.hostfile and "NODE_RANK" not in env:
        return [sys.executable, "-u", "-m", "deepspeed.launcher.runner", f"--master_port={port}",
                f"--hostfile={p.hostfile}", f"--master_addr={p.master_addr}", log_level, *module]
    world_info = base64.urlsafe_b64encode(json.dumps(hosts(p, env)).encode()).decode()
    cmd = [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
           f"--master_addr={p.master_addr if p.hostfile else '127.0.0.1'}", f"--master_port={port}", log_level]
    if p.hostfile:
        cmd.append(f"--node_rank={env['NODE_RANK']}")
    return cmd + module


def launcher_env(p: Train) -> dict:
    """What the launcher and its ranks get besides this process's environment."""
    return threads_per_rank(p) | accelerator_env(p)


def accelerator_env(p: Train, env: dict | None = None) -> dict:
    """Without a CUDA GPU this pipeline starts CPU ranks (hosts), so it tells DeepSpeed so: DS_ACCELERATOR=cpu.
    Left to detect it, DeepSpeed warns "Setting accelerator to CPU. If you have GPU or other accelerator, we
    were unable to detect it." once in the launcher and once in every rank, on every run. train.verbose lets
    it detect (and warn); a DS_ACCELERATOR of the user's own is kept."""
    env = os.environ if env is None else env
    if p.verbose or "DS_ACCELERATOR" in env or torch.cuda.is_available():
        return {}
    return {"DS_ACCELERATOR": "cpu"}


def threads_per_rank(p: Train) -> dict:
    """CPU ranks share the cores (torchrun's rule): each gets cores / ranks threads, unless the user chose;
    more threads than cores would have the ranks fight over them."""
    if "OMP_NUM_THREADS" in os.environ or torch.cuda.is_available():
        return {}
    return {"OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // p.num_procs))}


def interpreter_first_path() -> str:
    """PATH with this interpreter's folder first. torch checks DeepSpeed's compiled shared-memory op with the
    first `ninja` on PATH; a system ninja and the virtualenv's each take the other's build log for stale, so
    every switch between a run with the virtualenv activated and one without recompiled the op (45-80 s)."""
    return f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


def launch(cmd: list[str], env: dict) -> int:
    """Run the launcher; a SIGTERM or SIGINT here is passed on to every rank (which checkpoint, then exit)
    and this process waits for them: DeepSpeed's single-node runner would die and leave them running. The
process's own handlers are back once the launcher has exited."""
    import psutil

    proc = subprocess.Popen(cmd, env=os.environ | {"PYTHONUNBUFFERED": "1", "PATH": interpreter_first_path()} | env)
    signalled: list[psutil.Process] = []

    def forward(signum, frame):
        children = psutil.Process(proc.pid).children(recursive=True)
        signalled.extend(children)
        for child in children:
            try:
                child.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass

    before = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    if not signalled:
        return code
    psutil.wait_procs(signalled, timeout=120)  # the ranks finish their checkpoint before this stage ends
    return PREEMPTED
