"""training.ops: DeepSpeed's CPU op is built in this environment's folder, and a killed builder's lock hangs nobody."""

import fcntl
import subprocess
import sys
from pathlib import Path

from tasks.training import ops
from tests.conftest import ROOT


def test_the_op_lives_in_this_environment_unless_the_user_chose(monkeypatch, tmp_path):
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    assert ops.extensions_dir() == Path(sys.prefix) / "torch_extensions"
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert ops.extensions_dir() == tmp_path


def test_a_lock_left_by_a_killed_builder_is_cleared_not_waited_on(monkeypatch):
    # torch's own guard is a plain file: left behind, every later build waited on it forever
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    ops.build()  # built (or loaded) first, so the stale lock below is the only obstacle
    root = ops.extensions_dir()
    name = "deepspeed_shm_comm"
    with open(root / f".{name}.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)  # as a builder would: nobody else is inside while the lock is planted
        (root / name / "lock").touch()
    done = subprocess.run([sys.executable, "-m", "tasks.training.ops"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "shared-memory op: ready" in done.stdout
    assert not (root / name / "lock").exists()


NO_COMPILER = """
import os, torch, deepspeed
from tasks.training import ops
assert ops.build() is None
deepspeed.init_distributed(dist_backend="gloo")
t = torch.ones(3)
deepspeed.comm.all_reduce(t)
print("all-reduced", t.tolist())
"""


def test_without_a_compiler_deepspeed_goes_on_through_gloo_and_says_so(tmp_path):
    # a bare machine (Python, git and make only): the op cannot be built, and training must not fail for it
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "CXX": "/nonexistent/c++",
           "TORCH_EXTENSIONS_DIR": str(tmp_path / "empty"), "DS_ACCELERATOR": "cpu", "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29771",
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", NO_COMPILER], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all-reduced [1.0, 1.0, 1.0]" in done.stdout
    assert "no C++ compiler (/nonexistent/c++)" in done.stderr and "through gloo" in done.stderr
    assert not list((tmp_path / "empty").rglob("*.so"))
