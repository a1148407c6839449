"""The training benchmarks still run (their figures are read by people, not asserted: see benchmarks/).

    pytest tests/test_benchmarks.py
"""

from __future__ import annotations

import re
import sys

import pytest

from tests.conftest import ROOT, run


def test_gpu_benchmark_runs_its_smoke_configuration_on_the_cpu():
    out = run([sys.executable, "benchmarks/gpu_throughput.py", "--smoke"], ROOT, timeout=300).stdout
    assert re.search(r"Transformer [\d.]+M parameters .*, bf16, ZeRO stage \d, batch 2 x 32 tokens", out), out
    assert re.search(r"ms a step, [\d,]+ tokens/s, [\d.]+ TFLOP/s", out), out
    assert re.search(r"DeepSpeed engine [\d.]+ ms a step, raw PyTorch [\d.]+ ms a step, ratio [\d.]+", out), out


def test_engine_overhead_benchmark_times_each_part_of_a_step():
    out = run([sys.executable, "benchmarks/engine_overhead.py", "--steps", "60"], ROOT, timeout=300).stdout
    for part in ("forward", "backward", "step", "total"):
        assert re.search(rf"^\s+{part}\s+\d+\s+\d+\s+-?\d+", out, re.M), out
    assert re.search(r"DeepSpeed's \d+ µs, the same work written bare \d+ µs", out), out


@pytest.mark.slow
def test_ddp_benchmark_trains_both_sides_to_the_same_losses():
    out = run([sys.executable, "benchmarks/train_vs_ddp.py", "--model", "mlp", "--epochs", "2", "--copies", "0",
               "--repeat", "1"], ROOT, timeout=600).stdout
    rows = re.findall(r"^\s+(\d)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", out, re.M)
    assert [r[0] for r in rows] == ["1", "2"], out
    assert all(float(stage) == pytest.approx(float(ddp), rel=1e-5) for *_, stage, ddp in rows), out
    assert re.search(r"stage / DDP time per epoch .*: [\d.]+ +target <= 1.05", out), out
