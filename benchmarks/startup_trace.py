"""Timestamps from every process of a train stage run, for benchmarks/startup.py (the project never imports it).

    cp benchmarks/startup_trace.py DIR/sitecustomize.py
    STARTUP_TRACE=events.jsonl PYTHONPATH=DIR:. python -m tasks.train

Python imports `sitecustomize` at start-up from the path, so every Python
process of the run (the DVC side, DeepSpeed's runner and launch, the ranks)
loads this file first and appends JSON lines to $STARTUP_TRACE: when the
process started and reached this file, how long the first import of a few
heavy modules took, when the stage's phases began and ended (load_params,
precheck, deepspeed.init_distributed and its shared-memory op, the data,
deepspeed.initialize, the first forward and step, validation, checkpoints,
barriers, the model file, the process-group teardown) and when it exited.
It only wraps functions (time before, time after); what they do is unchanged,
unless $STARTUP_WHATIF names changes to try (comma-separated, for startup.py's
--candidates; each a change proposed to the stage, made here from outside):

    no_pandas          pandas cannot be imported, as in an environment without
                       it (the dev extra installs it; pyarrow then imports it
                       on pq.read_table, compute functions and to_numpy)
    dvc_os_exit        the DVC side ends with os._exit(code) after a flush,
                       not sys.exit (no interpreter teardown), as the ranks do
    launch_in_process  the DVC side runs DeepSpeed's per-node launcher
                       (deepspeed.launcher.launch) in its own process, not as a
                       child Python process importing torch and DeepSpeed again
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import time

TRACE = os.environ.get("STARTUP_TRACE")
WHATIF = set(filter(None, os.environ.get("STARTUP_WHATIF", "").split(",")))
# the first import of these is timed (start and end, nested imports included)
IMPORTS = {"torch", "torch._dynamo", "deepspeed", "numpy", "pyarrow", "sklearn", "sklearn.metrics", "dvclive", "tqdm",
           "safetensors", "models", "tasks.params", "tasks.training.launch", "tasks.training.run"}
# (module, attribute) wrapped once the module is imported: a span event per call
CALLS = {
    "tasks.params": ["load_params"],
    "tasks.data.tables": ["read_model_table"],
    "models": ["build"],
    "tasks.training.engine": ["ds_config"],
    "tasks.training.launch": ["precheck", "launch"],
    "tasks.training.loss": ["validate"],
    "tasks.training.run": ["fingerprint", "write_model", "starting_point"],
    "deepspeed": ["init_distributed", "initialize"],
    "deepspeed.comm.torch": ["build_shm_op"],
    "deepspeed.runtime.engine": ["DeepSpeedEngine.save_checkpoint", "DeepSpeedEngine.load_checkpoint"],
    "safetensors.torch": ["save_file"],
    "torch.distributed": ["barrier", "destroy_process_group"],
}
STEPS = {"n": 0, "last_end": None}


def emit(event: str, **fields) -> None:
    fields |= {"ev": event, "pid": os.getpid()}
    with open(TRACE, "a") as f:  # one short append per event: lines from several processes stay whole
        f.write(json.dumps(fields) + "\n")


def role() -> str:
    argv = " ".join(getattr(sys, "orig_argv", sys.argv))
    for name in ("deepspeed.launcher.runner", "deepspeed.launcher.launch"):
        if name in argv:
            return name.rsplit(".", 1)[1]
    if "tasks.train" in argv:
        return f"rank{os.environ['RANK']}" if "LOCAL_RANK" in os.environ else "dvc"
    return "other"


def started_at() -> float:
    """When this process was forked (the kernel's clock ticks since boot, against /proc/uptime)."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def span(name: str, fn):
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        t0 = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            emit("call", name=name, t0=t0, t1=time.time())

    return wrapped


def patch(module) -> None:
    if module.__name__ == "tasks.training.launch" and WHATIF & {"dvc_os_exit", "launch_in_process"}:
        module.launch = dvc_side_launch(module.launch)
    for attr in CALLS.get(module.__name__, []):
        owner, _, name = attr.rpartition(".")
        target = getattr(module, owner) if owner else module
        if hasattr(target, name):
            setattr(target, name, span(f"{module.__name__}.{attr}", getattr(target, name)))
    if module.__name__ == "deepspeed.runtime.engine":
        patch_steps(module.DeepSpeedEngine)


def dvc_side_launch(launch):
    """What-ifs dvc_os_exit and launch_in_process: the DVC side's launch(cmd, env)."""

    def in_process(cmd: list[str], env: dict) -> int:
        import runpy

        os.environ.update({"PYTHONUNBUFFERED": "1"} | env)
        sys.argv = [cmd[cmd.index("-m") + 1], *cmd[cmd.index("-m") + 2:]]
        try:
            runpy.run_module("deepspeed.launcher.launch", run_name="__main__", alter_sys=True)
        except SystemExit as e:
            return e.code if isinstance(e.code, int) else 1
        return 0

    def launched(cmd: list[str], env: dict) -> int:
        code = in_process(cmd, env) if "launch_in_process" in WHATIF else launch(cmd, env)
        if "dvc_os_exit" in WHATIF:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)  # emits the exit event first (traced_exit)
        return code

    return launched


def patch_steps(engine) -> None:
    """The first forward's start and the first step's end; before each checkpoint, the steps so far and
    when the last one ended (the epoch's end)."""
    forward, step, save = engine.forward, engine.step, engine.save_checkpoint

    def first_forward(self, *args, **kwargs):
        if STEPS["n"] == 0 and STEPS["last_end"] is None:
            STEPS["last_end"] = 0.0
            emit("first_forward", t=time.time())
        return forward(self, *args, **kwargs)

    def counted_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        STEPS["n"] += 1
        STEPS["last_end"] = time.time()
        if STEPS["n"] == 1:
            emit("first_step_end", t=STEPS["last_end"])
        return out

    def save_checkpoint(self, *args, **kwargs):
        emit("steps", n=STEPS["n"], t=STEPS["last_end"])
        return save(self, *args, **kwargs)

    engine.forward, engine.step, engine.save_checkpoint = first_forward, counted_step, save_checkpoint


class Missing(importlib.abc.Loader):
    """What-if no_pandas: importing it fails as if it were not installed."""

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):
        pass


class Finder(importlib.abc.MetaPathFinder):
    """Times the first import of IMPORTS and wraps CALLS' functions once their module has run."""

    def find_spec(self, fullname, path, target=None):
        if "no_pandas" in WHATIF and fullname.split(".")[0] == "pandas":
            return importlib.machinery.ModuleSpec(fullname, Missing())  # no origin: torch._dynamo skips it
        if fullname not in IMPORTS and fullname not in CALLS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or isinstance(spec.loader, type) or not hasattr(spec.loader, "exec_module"):
            return spec  # a built-in or frozen module's loader is a class shared by all: left alone
        run = spec.loader.exec_module

        def exec_module(module):
            t0 = time.time()
            run(module)
            if fullname in IMPORTS:
                emit("import", name=fullname, t0=t0, t1=time.time())
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    emit("proc", role=role(), ppid=os.getppid(), t_start=started_at(), t_site=time.time())
    sys.meta_path.insert(0, Finder())
    real_exit = os._exit

    def traced_exit(code):
        emit("exit", t=time.time(), code=code, steps=STEPS["n"])
        real_exit(code)

    os._exit = traced_exit
    atexit.register(lambda: emit("exit", t=time.time(), code=None, steps=STEPS["n"]))


if TRACE:
    install()
