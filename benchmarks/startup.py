"""Benchmark: where the train stage's fixed cost goes, from `python -m tasks.train` to its exit.

    python benchmarks/startup.py [--model cnn] [--epochs 8] [--batch-size 32] [--procs 2] [--copies 4] [--repeat 3]
                                 [--candidates]

Prepares the digits as benchmarks/train_vs_ddp.py does, then runs the stage as
DVC runs it (`python -m tasks.train`, CPU ranks over gloo) --repeat times with
benchmarks/startup_trace.py loaded first by every Python process of the run
(as `sitecustomize`: nothing in the project changes). From the timestamps the
processes leave it prints, for the run of median length, the run cut into
consecutive phases, seconds and share of the whole (they add up to it), with
each phase's spread over the runs:

- the DVC side: Python start, imports, params, precheck, starting the launcher;
- DeepSpeed's launcher (`deepspeed.launcher.launch`; on several machines its
  runner too): from its start to the ranks' start;
- rank 0 (rank 1 runs alongside; the collectives wait for the slower one):
  Python start, imports, deepspeed.init_distributed (with DeepSpeed's
  shared-memory op), data and model, deepspeed.initialize, the first step,
  the other steps, what runs between epochs (validation, checkpoint, logs);
- the end: the best checkpoint into the model file, process-group teardown,
  the launcher noticing its ranks are gone, each process's exit.

Then each rank's milestones (from the launcher's start to its first line,
init_distributed, the first step, exit), and pieces of the start-up timed by
themselves in fresh processes, median of --repeat: imports, reading a split,
an interpreter's exit with torch loaded. With --candidates, whole runs with
each proposed cut made from outside by the tracer (STARTUP_WHATIF, see
startup_trace.py), interleaved with runs as it is: each one's fixed cost and
what it saves (the median of the run-by-run differences), and every phase's
median under each, which shows where each saves. benchmarks/train_vs_ddp.py
times the whole run against DDP's and Lightning's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from train_vs_ddp import child_env, prepare, stage_params  # noqa: E402


def traced_run(work: Path, args, site: Path, whatif: str = "", **env: str) -> dict:
    """One run of the stage with the tracer (and the what-ifs named, see startup_trace.py): its events by
    process role, its wall-clock span, its history."""
    params = stage_params(work, args)
    shutil.rmtree(params["paths"]["checkpoints"], ignore_errors=True)  # from scratch, not resumed
    trace = work / "trace.jsonl"
    trace.unlink(missing_ok=True)
    env = child_env(STARTUP_TRACE=str(trace), STARTUP_WHATIF=whatif, PYTHONPATH=f"{site}{os.pathsep}{ROOT}", **env)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "tasks.train"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    ended = time.time()
    if proc.returncode:
        sys.exit(f"python -m tasks.train failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    roles = {e["pid"]: e["role"] for e in events if e["ev"] == "proc"}
    by_role: dict[str, list[dict]] = {}
    for e in events:
        by_role.setdefault(roles.get(e["pid"], "other"), []).append(e)
    history = json.loads(Path(params["paths"]["train_history"]).read_text())
    return {"events": by_role, "started": started, "ended": ended, "history": history}


class Process:
    """One process's events: its start, first imports, calls (by name, in order), exit."""

    def __init__(self, events: list[dict]):
        self.proc = next(e for e in events if e["ev"] == "proc")
        self.imports = {e["name"]: e for e in reversed(events) if e["ev"] == "import"}
        self.calls: dict[str, list[dict]] = {}
        for e in events:
            if e["ev"] == "call":
                self.calls.setdefault(e["name"].rsplit(".", 1)[1], []).append(e)
        self.marks = {e["ev"]: e for e in events if e["ev"] in ("first_forward", "first_step_end")}
        ended = next((e for e in events if e["ev"] == "exit"), {})
        self.exit, self.exit_steps = ended.get("t"), ended.get("steps", 0)

    def call(self, name: str, which: int = 0) -> dict:
        return self.calls[name][which]

    def took(self, name: str, *, calls: bool = False) -> float:
        """Seconds of a first import, or of every call of a function."""
        if calls:
            return sum(c["t1"] - c["t0"] for c in self.calls.get(name, []))
        e = self.imports.get(name)
        return e["t1"] - e["t0"] if e else 0.0


def phases(run: dict) -> list[tuple[str, float]]:
    """The run cut into consecutive phases on rank 0's path: each ends where the next begins, so they add up
    to the whole run (the training steps and what runs between epochs share one stretch)."""
    ev = run["events"]
    dvc, r0 = Process(ev["dvc"]), Process(ev["rank0"])
    launch = Process(ev["launch"]) if "launch" in ev else None  # None: run inside the DVC side (a what-if)
    runner = Process(ev["runner"]) if "runner" in ev else None
    launched = dvc.calls["launch"][0]["t1"] if "launch" in dvc.calls else dvc.exit  # launch() returned
    steps, n_steps = sum(e["seconds"] for e in run["history"]), r0.exit_steps
    first = r0.marks["first_step_end"]["t"] - r0.marks["first_forward"]["t"]
    cuts = [
        ("DVC side: Python start", dvc.proc["t_site"]),
        (f"DVC side: imports (torch {dvc.took('torch'):.2f} s)", dvc.call("load_params")["t0"]),
        ("DVC side: params", dvc.call("load_params")["t1"]),
        (f"DVC side: precheck (reading the splits {dvc.took('read_model_table', calls=True):.2f} s)",
         dvc.call("precheck")["t1"]),
        *([("DVC side: starting the launcher", (runner or launch).proc["t_start"])] if launch else []),
        *([("DeepSpeed's runner: start, imports, starting launch", launch.proc["t_start"])] if runner else []),
        (f"DeepSpeed's launch{'' if launch else ' (in the DVC side)'}: start, imports (deepspeed "
         f"{(launch or dvc).took('deepspeed'):.2f} s), starting the ranks", r0.proc["t_start"]),
        ("rank 0: Python start", r0.proc["t_site"]),
        (f"rank 0: imports (torch {r0.took('torch'):.2f} s, tasks.params {r0.took('tasks.params'):.2f} s), params",
         r0.call("load_params")["t1"]),
        (f"rank 0: import deepspeed ({r0.took('deepspeed'):.2f} s), models", r0.call("init_distributed")["t0"]),
        (f"rank 0: deepspeed.init_distributed (shared-memory op {r0.took('build_shm_op', calls=True):.2f} s; "
         f"waits for rank 1)", r0.call("init_distributed")["t1"]),
        (f"rank 0: data and model (reading the splits {r0.took('read_model_table', calls=True):.2f} s)",
         r0.call("initialize")["t0"]),
        (f"rank 0: deepspeed.initialize (torch._dynamo import {r0.took('torch._dynamo'):.2f} s)",
         r0.call("initialize")["t1"]),
        (f"rank 0: to the first step (run record, DVCLive {r0.took('dvclive'):.2f} s)",
         r0.marks["first_forward"]["t"]),
        (f"rank 0: first step (the others: {(steps - first) / max(n_steps - 1, 1) * 1e3:.1f} ms each)",
         r0.marks["first_step_end"]["t"]),
    ]
    rows, last = [], run["started"]
    for name, t in cuts:
        rows.append((name, t - last))
        last = t
    epochs_end = r0.calls["save_checkpoint"][-1]["t1"]  # the last epoch's checkpoint written
    rows.append((f"rank 0: the other training steps ({n_steps - 1}, {len(run['history'])} epochs)", steps - first))
    rows.append((f"rank 0: between epochs (validation {r0.took('validate', calls=True):.2f} s, scikit-learn import "
                 f"{r0.took('sklearn'):.2f} s; checkpoints {r0.took('save_checkpoint', calls=True):.2f} s; logs)",
                 epochs_end - last - (steps - first)))
    last = epochs_end
    for name, t in [("rank 0: the best checkpoint into the model file, barrier",
                     r0.call("destroy_process_group")["t0"]),
                    ("rank 0: process-group teardown, exit", r0.exit),
                    *([("launch: notices its ranks have exited (it polls once a second)", launch.exit),
                       ("launch: interpreter teardown", launched)] if launch else
                      [("launch (in the DVC side): notices its ranks have exited (it polls once a second)",
                        launched)]),
                    ("DVC side: exit", run["ended"])]:
        rows.append((name, t - last))
        last = t
    return rows


def milestones(run: dict) -> list[tuple[str, list[float]]]:
    """Seconds from the launcher's start to each rank's milestones."""
    ev = run["events"]
    launcher = [ev[r] for r in ("runner", "launch") if r in ev]
    t0 = Process(launcher[0]).proc["t_start"] if launcher else Process(ev["dvc"]).call("precheck")["t1"]
    ranks = [Process(ev[r]) for r in sorted(ev) if r.startswith("rank")]
    marks = [("first line (Python up)", lambda p: p.proc["t_site"]),
             ("init_distributed starts", lambda p: p.call("init_distributed")["t0"]),
             ("init_distributed returns", lambda p: p.call("init_distributed")["t1"]),
             ("initialize returns", lambda p: p.call("initialize")["t1"]),
             ("first step ends", lambda p: p.marks["first_step_end"]["t"]),
             ("exits", lambda p: p.exit)]
    return [(name, [f(p) - t0 for p in ranks]) for name, f in marks]


PIECES = {  # name: (code timed in a fresh interpreter, what runs before it there, environment)
    "python start to exit (python -c pass)": ("", "", {}),
    "import torch": ("import torch", "", {}),
    "import deepspeed (torch imported)": ("import deepspeed", "import torch", {}),
    "import deepspeed, DS_ACCELERATOR=cpu (torch imported)": ("import deepspeed", "import torch",
                                                              {"DS_ACCELERATOR": "cpu"}),
    "import torch._dynamo (torch.optim's first optimizer does)": ("import torch._dynamo", "import torch", {}),
    "from sklearn.metrics import f1_score (the first validation)": ("from sklearn.metrics import f1_score",
                                                                    "import torch", {}),
    "import dvclive (rank 0)": ("import dvclive", "import torch", {}),
    "the DVC side's imports (tasks.train, tasks.training.launch; torch imported)":
        ("import tasks.train, tasks.training.launch", "import torch", {}),
    "read a split: pyarrow.parquet.read_table (pyarrow imports pandas)":
        ("pq.read_table(SPLIT).column(0).to_numpy()", "import torch, pyarrow.parquet as pq", {}),
    "import pandas (what pyarrow imports once pandas is installed)": ("import pandas", "import torch", {}),
    "interpreter exit, deepspeed and torch loaded (from the atexit handlers on)": ("EXIT", "import deepspeed", {}),
    "the same after gc.freeze()": ("EXIT", "import deepspeed, gc; gc.freeze()", {}),
    "os._exit after a flush instead": ("os._exit", "import deepspeed", {}),
}
CANDIDATES = {  # name: (STARTUP_WHATIF, extra environment); see startup_trace.py
    "as it is": ("", {}),
    "without pandas in the environment": ("no_pandas", {}),
    "the DVC side ends with os._exit": ("dvc_os_exit", {}),
    "launch inside the DVC side, which ends with os._exit": ("launch_in_process,dvc_os_exit", {}),
    "DS_ACCELERATOR=cpu": ("", {"DS_ACCELERATOR": "cpu"}),
    "all of the above": ("no_pandas,dvc_os_exit,launch_in_process", {"DS_ACCELERATOR": "cpu"}),
}


def piece(code: str, before: str, env: dict, split: Path) -> float:
    """Seconds of `code` in a fresh interpreter after `before`; "" times the whole process, start to exit;
    EXIT and os._exit time the interpreter's end."""
    if not code:
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=child_env(**env), check=True)
        return time.perf_counter() - started
    if code == "EXIT":
        script = f"import atexit, time\n{before}\natexit.register(lambda: print(time.time(), flush=True))"
    elif code == "os._exit":
        script = f"import os, sys, time\n{before}\nprint(time.time(), flush=True)\nsys.stdout.flush()\nos._exit(0)"
    else:
        script = (f"import time\n{before}\nSPLIT = {str(split)!r}\nstarted = time.perf_counter()\n{code}\n"
                  f"print(time.perf_counter() - started)")
    out = subprocess.run([sys.executable, "-c", script], env=child_env(**env), check=True, capture_output=True,
                         text=True).stdout
    return time.time() - float(out.split()[-1]) if code in ("EXIT", "os._exit") else float(out.split()[-1])


def print_phases(runs: list[dict], title: str) -> dict:
    walls = [r["ended"] - r["started"] for r in runs]
    median = sorted(range(len(runs)), key=lambda i: walls[i])[len(runs) // 2]
    table = [phases(r) for r in runs]
    whole = walls[median]
    print(f"\n{title}: {whole:.2f} s (the run of median length of {len(runs)}; runs "
          f"{' '.join(f'{w:.2f}' for w in walls)} s)")
    print(f"{'phase':<96}{'s':>7}{'share':>7}{'spread':>13}")
    for i, (name, seconds) in enumerate(table[median]):
        values = [t[i][1] for t in table]
        print(f"{name:<96}{seconds:7.2f}{seconds / whole:7.1%}{min(values):7.2f}-{max(values):.2f}")
    print(f"{'total':<96}{sum(s for _, s in table[median]):7.2f}{1:7.1%}")
    steps = sum(e["seconds"] for e in runs[median]["history"])
    print(f"fixed cost (the whole run less the epochs' step time): {whole - steps:.2f} s")
    return runs[median]


def phase_key(name: str) -> str:
    """A phase's name without its measured details, the same with and without a what-if."""
    return re.sub(r" \([^()]*(\([^()]*\)[^()]*)*\)", "", name)


def print_candidate_phases(tried: dict[str, list[dict]]) -> None:
    """Each phase's median seconds under each candidate: where each one saves."""
    medians = {}
    for name, rs in tried.items():
        per_run = [dict((phase_key(k), v) for k, v in phases(r)) for r in rs]
        medians[name] = {k: statistics.median(run[k] for run in per_run if k in run)
                         for k in dict.fromkeys(k for run in per_run for k in run)}
    keys = list(dict.fromkeys(k for m in medians.values() for k in m))
    print("\nthe same runs phase by phase (median seconds; - where the phase is gone)")
    print(f"{'phase':<64}" + "".join(f"{'#' + str(i + 1):>8}" for i in range(len(tried))))
    for k in keys:
        print(f"{k[:63]:<64}" + "".join(f"{m[k]:8.2f}" if k in m else f"{'-':>8}" for m in medians.values()))
    print("  " + "; ".join(f"#{i + 1} {name}" for i, name in enumerate(tried)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="cnn", choices=["mlp", "cnn", "rnn", "transformer"])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--copies", type=int, default=4, help="augmented copies of each training row (params.yaml: 1)")
    ap.add_argument("--repeat", type=int, default=3, help="traced runs, and runs of each piece timed by itself")
    ap.add_argument("--candidates", action="store_true",
                    help="also time whole runs with each proposed cut made from outside (startup_trace.py)")
    args = ap.parse_args()
    args.zero_stage = None

    with tempfile.TemporaryDirectory() as tmp:
        work = prepare(Path(tmp), args.copies)
        site = Path(tmp) / "site"
        site.mkdir()
        shutil.copy(ROOT / "benchmarks" / "startup_trace.py", site / "sitecustomize.py")
        runs = [traced_run(work, args, site) for _ in range(args.repeat)]
        split = Path(stage_params(work, args)["paths"]["splits"]) / "train.parquet"
        pieces = {k: [] for k in PIECES}
        for _ in range(args.repeat):  # interleaved
            for name, (code, before, env) in PIECES.items():
                pieces[name].append(piece(code, before, env, split))
        tried = {k: [] for k in CANDIDATES} if args.candidates else {}
        for _ in range(args.repeat if tried else 0):  # interleaved
            for name, (whatif, env) in CANDIDATES.items():
                tried[name].append(traced_run(work, args, site, whatif, **env))

    median = print_phases(runs, f"the train stage's whole run, {args.model}, {args.procs} CPU ranks, {args.epochs} "
                                f"epochs, {os.cpu_count()} cores")
    ranks = milestones(median)
    print("\nseconds from the launcher's start, rank by rank")
    print(f"{'':<28}" + "".join(f"{'rank ' + str(i):>9}" for i in range(len(ranks[0][1]))))
    for name, values in ranks:
        print(f"{name:<28}" + "".join(f"{v:9.2f}" for v in values))

    print(f"\npieces timed by themselves in fresh processes (median of {args.repeat}, and the spread), seconds")
    for name, values in pieces.items():
        print(f"{name:<80}{statistics.median(values):7.3f}   {min(values):.3f}-{max(values):.3f}")

    if tried:
        def fixed(r: dict) -> float:
            return r["ended"] - r["started"] - sum(e["seconds"] for e in r["history"])

        print(f"\nwhole runs with a proposed cut made from outside ({args.repeat} of each, interleaved): median "
              f"whole run and fixed cost, and the fixed cost saved (median of the differences run by run)")
        print(f"{'':<56}{'whole s':>9}{'fixed s':>9}{'spread':>13}{'saves s':>9}")
        for name, rs in tried.items():
            fixes = [fixed(r) for r in rs]
            saved = statistics.median(fixed(a) - fixed(b) for a, b in zip(tried["as it is"], rs))
            print(f"{name:<56}{statistics.median(r['ended'] - r['started'] for r in rs):9.2f}"
                  f"{statistics.median(fixes):9.2f}{min(fixes):7.2f}-{max(fixes):<5.2f}{saved:+9.2f}")
        print_candidate_phases(tried)


if __name__ == "__main__":
    main()
