"""DeepSpeed's compiled shared-memory op for CPU ranks: built once per environment, never raced.

    python -m tasks.training.ops      # `make setup` runs it: the op compiles here (about a minute), once

On CPU ranks `deepspeed.init_distributed` compiles a small C++ op the first time
(torch's JIT extensions). Left to the ranks, that goes wrong in three ways, each
seen here: every rank of every concurrent run compiles at once on two cores;
torch guards the build with a plain `lock` file, so a rank killed while
compiling (a `kill -9`, a test's timeout) leaves a lock every later rank waits
on forever; and the shared default folder (~/.cache/torch_extensions) is
rebuilt each time another virtualenv uses it, because the include paths differ.

So the op lives in a folder of this interpreter's environment, `build()` takes
an advisory `flock` (the kernel drops it when its holder dies) before torch's
build, and under it a torch `lock` left behind is known to be stale and removed.
Every rank calls `build()` before `deepspeed.init_distributed`, which then finds
the op loaded. Hand-written because torch's FileBaton has neither a timeout nor
a way to tell a dead holder from a slow one.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

OP = "ShareMemCommBuilder"


def extensions_dir() -> Path:
    """Where torch builds the op: the user's TORCH_EXTENSIONS_DIR, else a folder of this environment."""
    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")
    return Path(chosen) if chosen else Path(sys.prefix) / "torch_extensions"


def build(verbose: bool = False):
    """Load (compiling if needed) DeepSpeed's shared-memory op; None where the accelerator has none (GPUs)."""
    import deepspeed.ops
    from deepspeed.accelerator import get_accelerator

    builder = get_accelerator().create_op_builder(OP)
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    root = extensions_dir()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{builder.NAME}.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # one builder at a time; released by the kernel if it dies
        torch_lock = root / builder.NAME / "lock"
        if torch_lock.exists():  # nobody holds the flock, so nobody is building: a killed builder's lock
            torch_lock.unlink()
        built = any((root / builder.NAME).glob("*.so"))
        if not built and not shutil.which(os.environ.get("CXX", "c++")):
            return without_op(builder, f"no C++ compiler ({os.environ.get('CXX', 'c++')}) to build it")
        if verbose and not built:
            print(f"compiling DeepSpeed's shared-memory op into {root} (once per environment, about a minute)",
                  flush=True)
        try:
            return builder.load(verbose=False)
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:  # torch's build error, or no ninja
            return without_op(builder, f"its build failed ({str(e).splitlines()[0][:200] if str(e) else e!r})")


def without_op(builder, why: str) -> None:
    """This process's DeepSpeed goes on without the op: its CPU ranks then all-reduce through gloo (correct,
    slower for large models); one line says so, on stderr, from the first rank."""
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__[builder.NAME] = False  # what deepspeed.comm checks before loading it
    if os.environ.get("LOCAL_RANK", "0") != "0":
        return None  # one line per run, not one per rank
    print(f"DeepSpeed's shared-memory op is not used: {why}; CPU ranks all-reduce through gloo instead "
          f"(install g++ and run `python -m tasks.training.ops` for the faster op)", file=sys.stderr, flush=True)
    return None


def main() -> None:
    op = build(verbose=True)
    print("DeepSpeed's shared-memory op: " + ("ready" if op is not None else "not used"))


if __name__ == "__main__":
    main()
