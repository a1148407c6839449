"""Benchmark: a full pipeline run and a no-op rerun, by `dvc repro` and by the flow.

    python benchmarks/pipeline_runs.py

Each driver gets a fresh copy of the repository (so both start from nothing),
then reruns once with nothing changed. Prints seconds and the flow/DVC ratio.
The Prefect flow runs on the embedded server, started once before timing.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import copy_repo, run  # noqa: E402  (sets PATH, PREFECT_HOME)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import pipeline

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        dvc_repo = copy_repo(Path(tmp) / "dvc", master_port=29810)
        flow_repo = copy_repo(Path(tmp) / "flow", master_port=29820)
        results = {
            "full run": (timed(lambda: run(["dvc", "repro"], dvc_repo)),
                         timed(lambda: pipeline(repo=str(flow_repo)))),
            "no-op rerun": (timed(lambda: run(["dvc", "repro"], dvc_repo)),
                            timed(lambda: pipeline(repo=str(flow_repo)))),
        }
    print(f"\n{'':14}{'dvc repro':>12}{'flow':>12}{'flow/dvc':>10}")
    for name, (dvc_s, flow_s) in results.items():
        print(f"{name:14}{dvc_s:11.1f}s{flow_s:11.1f}s{flow_s / dvc_s:10.2f}")
    print(f"(cores: {os.cpu_count()})")


if __name__ == "__main__":
    main()
