"""The training benchmarks still run (their figures are read by people, not asserted: see benchmarks/).

    pytest tests/test_benchmarks.py
"""

from __future__ import annotations

import json
import os
import re
import shutil
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


def test_startup_tracer_records_a_process_start_imports_and_exit(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(ROOT / "benchmarks" / "startup_trace.py", site / "sitecustomize.py")
    trace = tmp_path / "trace.jsonl"
    env = os.environ | {"STARTUP_TRACE": str(trace), "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    run([sys.executable, "-c", "import numpy; import tasks.params; tasks.params.load_params"], tmp_path, env=env)
    events = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [e["ev"] for e in events][0] == "proc" and events[0]["t_start"] <= events[0]["t_site"], events
    assert {e["name"] for e in events if e["ev"] == "import"} >= {"numpy", "tasks.params"}, events
    assert events[-1]["ev"] == "exit", events


@pytest.mark.slow
def test_ddp_benchmark_trains_all_sides_to_the_same_losses_and_times_the_whole_runs():
    out = run([sys.executable, "benchmarks/train_vs_ddp.py", "--model", "mlp", "--epochs", "2", "--copies", "0",
               "--repeat", "1", "--lightning-defaults"], ROOT, timeout=600).stdout
    number = r"\s+([\d.]+)"
    rows = re.findall(rf"^\s+(\d){number * 7}{number * 4}$", out, re.M)  # 4 times, 3 ratios, 4 losses
    assert [r[0] for r in rows] == ["1", "2"], out
    for *_, stage, ddp, lightning, defaults in rows:
        assert float(stage) == pytest.approx(float(ddp), rel=1e-5), out
        assert float(stage) == pytest.approx(float(lightning), rel=1e-5), out
        assert float(stage) == pytest.approx(float(defaults), rel=1e-5), out
    assert re.search(r"stage / DDP +[\d.]+ +target <= 1.05", out), out
    assert re.search(r"stage / Lightning +[\d.]+ +target <= 1.00: (met|NOT met)", out), out
    for side in ("stage \\(python -m tasks.train\\)", "DDP \\(torchrun\\)", "Lightning \\(python script.py\\)"):
        assert re.search(rf"^{side}\s+[\d.]+\s+[\d.-]+\s+[\d.]+\s+[\d.]+", out, re.M), out
    assert re.search(r"stage / Lightning +whole run [\d.]+, fixed cost [\d.]+ \([+-][\d.]+ s\)", out), out


@pytest.mark.slow
def test_startup_benchmark_breaks_the_whole_run_down_and_times_the_candidates():
    out = run([sys.executable, "benchmarks/startup.py", "--model", "mlp", "--epochs", "1", "--copies", "0",
               "--repeat", "1", "--candidates"], ROOT, timeout=900).stdout
    whole = float(re.search(r"the train stage's whole run, .*: ([\d.]+) s", out).group(1))
    table = out.split("the train stage's whole run")[1].split("fixed cost")[0]
    for phase in ("DVC side: imports", "DVC side: precheck", "DeepSpeed's launch: start", "rank 0: imports",
                  "rank 0: deepspeed.init_distributed", "rank 0: deepspeed.initialize", "rank 0: first step",
                  "rank 0: between epochs", "launch: notices its ranks have exited", "DVC side: exit"):
        assert re.search(rf"^{re.escape(phase)}.*\s[\d.]+\s+[\d.]+%", table, re.M), out
    total = re.search(r"^total\s+([\d.]+)\s+100.0%", out, re.M)
    assert total and float(total.group(1)) == pytest.approx(whole, abs=0.02), out  # the phases add up
    assert re.search(r"^first line \(Python up\)\s+[\d.]+\s+[\d.]+$", out, re.M), out  # both ranks
    assert re.search(r"^import deepspeed \(torch imported\)\s+[\d.]+", out, re.M), out
    for candidate in ("as it is", "the DVC side ends with os._exit", "launch inside the DVC side",
                      "without pandas in the environment", "all of the above"):
        assert re.search(rf"^{re.escape(candidate)}.*\s[\d.]+\s+[\d.]+\s+[\d.]+-[\d.]+\s+[+-][\d.]+$", out, re.M), out
    assert re.search(r"^DVC side: exit(\s+[\d.]+){6}$", out, re.M), out  # phase by phase, each candidate
    # the launcher inside the DVC side (candidates 4 and 6): no launcher process to start
    assert re.search(r"^DVC side: starting the launcher(\s+[\d.]+){3}\s+-\s+[\d.]+\s+-$", out, re.M), out


def test_continual_benchmark_reports_each_strategy_against_its_targets():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from continual import report

    from tasks.continual.metrics import summary

    def result(R, steps):
        return {"matrix": {"matrix": R, "summary": summary(R)}, "steps": steps, "trend": []}

    naive = [[1.0], [0.0, 1.0]]
    replay = [[1.0], [0.97, 0.95]]
    joint = [[1.0], [0.99, 0.98]]
    lines = report({"naive": result(naive, 10), "replay": result(replay, 25), "joint": result(joint, 100)},
                   "class_incremental")
    assert re.match(r"naive\s+0\.500\s+-1\.000\s+100\.0p\s+0\.000\s+10\s+10%", lines[1]), lines
    assert "target replay ACC >= 0.90: 0.960 (met)" in lines
    assert "target replay forgetting <= 5 points on every past test set: 3.0 (met)" in lines
    assert "target replay within 3 points of joint at <= 30% of its steps: 2.5 points, 25% (met)" in lines
    domain = report({"replay": result([[0.9, None], [0.89, 0.93]], 5)}, "domain_incremental")
    assert domain[-1].startswith("target replay: no past test set loses > 2 points (1.0: met)"), domain
