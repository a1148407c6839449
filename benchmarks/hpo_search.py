"""Benchmark: the search on the digits, through the real flow (every trial a DVC experiment).

    python benchmarks/hpo_search.py                       # the full run: 30 trials, 5 seeds (hours on 2 cores)
    python benchmarks/hpo_search.py --trials 8 --seeds 2 --epochs 4 --parts pruning,parallel

Parts (each prints its figures and the ratio against its baseline side):
- pruning:  TPE with ASHA against the same TPE unpruned: total epochs trained (ratio, target <= 0.5) and the
            best validation loss of each, with the spread over the seeds;
- samplers: TPE against random search over `--seeds` study seeds: the median best validation loss, and
            how many trials each needs to reach the default params' validation loss;
- parallel: the same number of trials 2 at a time against 1 at a time: wall clock (ratio, target <= 0.6);
- test:     the best trial's test accuracy and errors against the default params'.

One copy of the repository runs the default pipeline once (the baseline); every study is a flow run with
its own study name on that copy, so DVC's run cache serves the data stages to every trial.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import copy_repo, run, set_params  # noqa: E402  (sets PATH, PREFECT_HOME)


def study_figures(repo: Path, name: str) -> dict:
    import optuna
    from optuna.trial import TrialState

    from tasks.hpo.study import storage_url
    from tasks.params import load_params
    from tasks.training.pruning import open_storage

    h = load_params(repo / "params.yaml").hpo.model_copy(update={"study": name})
    study = optuna.load_study(study_name=name, storage=open_storage(storage_url(h, repo)))
    done = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    best_so_far, curve = float("inf"), []
    for t in done:
        best_so_far = min(best_so_far, min(t.intermediate_values.values(), default=float("inf")))
        curve.append(best_so_far)
    return {"epochs": sum(len(t.intermediate_values) for t in done), "best": study.best_value,
            "pruned": sum(t.state == TrialState.PRUNED for t in done), "curve": curve, "study": study}


def search(repo: Path, name: str, trials: int, parallel: int, seed: int, pruner: str, sampler: str = "tpe") -> float:
    from flows.hpo import hpo

    set_params(repo, {"hpo.study": name, "hpo.seed": seed, "hpo.pruner.kind": pruner, "hpo.sampler": sampler,
                      "hpo.parallel": parallel, "hpo.procs_per_trial": 1})
    run(["git", "commit", "-qam", f"benchmark study {name}"], repo)
    start = time.perf_counter()
    hpo(repo=str(repo), trials=trials, parallel=parallel, register_best=False)
    return time.perf_counter() - start


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} (min {min(values):.4f}, max {max(values):.4f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--parts", default="pruning,samplers,parallel,test")
    a = ap.parse_args()
    parts = a.parts.split(",")
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        repo = copy_repo(Path(tmp) / "repo", master_port=29870)
        set_params(repo, {"train.epochs": a.epochs})
        run(["git", "commit", "-qam", "benchmark epochs"], repo)
        run(["dvc", "repro"], repo)
        run(["git", "add", "-A"], repo)
        run(["git", "commit", "-qm", "baseline", "--allow-empty"], repo)  # register committed the run already
        default_hist = json.loads((repo / "reports" / "train_history.json").read_text())
        default_loss = min(e["val_loss"] for e in default_hist)
        default_test = json.loads((repo / "reports" / "metrics.json").read_text())
        print(f"default params: best val_loss {default_loss:.4f}, test accuracy {default_test['accuracy']:.4f} "
              f"({a.epochs} epochs)")
        def studies(prefix: str, pruner: str, sampler: str = "tpe") -> list[dict]:
            figures = []
            for seed in range(a.seeds):
                search(repo, f"{prefix}-{seed}", a.trials, 1, seed, pruner, sampler)
                figures.append(study_figures(repo, f"{prefix}-{seed}"))
            return figures

        asha = studies("asha", "asha") if {"pruning", "samplers", "test"} & set(parts) else []
        if "pruning" in parts:
            plain = studies("plain", "none")
            e_asha, e_plain = sum(f["epochs"] for f in asha), sum(f["epochs"] for f in plain)
            print(f"pruning ({a.trials} trials x {a.seeds} seeds): epochs trained ASHA {e_asha} vs unpruned {e_plain}"
                  f" = {e_asha / e_plain:.2f} (target <= 0.50); pruned {sum(f['pruned'] for f in asha)} trials")
            print(f"  best val_loss ASHA {spread([f['best'] for f in asha])}; unpruned "
                  f"{spread([f['best'] for f in plain])}")
        if "samplers" in parts:
            rand = studies("random", "asha", sampler="random")
            for label, figs in (("TPE", asha), ("random", rand)):
                reach = [next((i + 1 for i, v in enumerate(f["curve"]) if v <= default_loss), None) for f in figs]
                print(f"samplers: {label}: median best val_loss {statistics.median(f['best'] for f in figs):.4f}; "
                      f"trials to reach the default's {default_loss:.4f}: {reach}")
        if "parallel" in parts:
            n = max(4, a.trials // 4)
            one = search(repo, "serial", n, 1, 100, "none")
            two = search(repo, "two-at-once", n, 2, 100, "none")
            print(f"parallel ({n} trials): 1 at a time {one:.0f} s, 2 at a time {two:.0f} s = {two / one:.2f} "
                  f"(target <= 0.60)")
        if "test" in parts:
            best = min(asha, key=lambda f: f["best"])["study"].best_trial
            ref = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], repo).stdout.split()
            ref = next(r for r in ref if r.endswith("/" + best.user_attrs["experiment"]))
            m = json.loads(run(["git", "show", f"{ref}:reports/metrics.json"], repo).stdout)
            rows = m.get("test_rows") or default_test.get("test_rows")
            err = lambda acc: round((1 - acc) * rows)  # noqa: E731
            print(f"test: best trial {best.user_attrs['experiment']} accuracy {m['accuracy']:.4f} "
                  f"({err(m['accuracy'])} errors) vs default {default_test['accuracy']:.4f} "
                  f"({err(default_test['accuracy'])} errors)")


if __name__ == "__main__":
    main()
