"""Benchmark: transfer learning on the digits, through the real pipeline (DVC, DeepSpeed, the registry).

    python benchmarks/transfer.py                          # 5 seeds, k = 10, scratch also at k = 20, 50, 100
    python benchmarks/transfer.py --seeds 2 --scratch-k 50 --epochs 20
    python benchmarks/transfer.py --parts new-rows --seeds 1 --new-epochs 6 --parent-epochs 2   # a quick check

Three parts (--parts k-shot,new-rows; the second is the k-shot's --scratch-k, "" leaves it out):

1. k-shot: the parent task is the digits 0-4 (every row), trained from scratch and registered in prod; the
   child task is 5-9 with k labelled training rows per class (ingest.per_class with per_class_in train, a
   seeded sample: ingest.sample_seed = the seed; every validation and test row of 5-9 kept, so the best
   epoch is chosen on a whole validation split, not on a row or two a class). Each child is one
   `dvc repro evaluate` of the same repository with its params:

   - scratch:        train.init.from null, the child's own fitted preprocessing;
   - linear probe:   from digits@prod, a new head, the backbone frozen;
   - fine-tune:      from digits@prod, a new head, everything trained at one rate;
   - discriminative: from digits@prod, a new head, the backbone at a tenth of the head's rate.

   Every child is scored on the test split of all the digits 5-9 (the same rows whatever the sample, as a
   row's split follows from its hash), read raw and put through each child's own saved transform, as
   load_model would. Printed: accuracy per variant (mean and spread over the seeds) and the best transfer
   variant's points over scratch (target >= +10).
2. Catch-up: scratch again at each --scratch-k; printed, the smallest k at which scratch's mean reaches the
   best transfer variant's at k (target >= 5x k).
3. New rows (a repository of its own): the same task, all ten digits, first with a label budget
   (ingest.per_class --new-parent-rows of each class's training rows, per_class_in train: every validation and
   test row kept), trained from scratch and registered in prod as the parent; then every row, the parent's
   task with new rows. Measured on the validation split, which is the same rows for the parent and both
   children (a row's split follows from its hash): the target is the parent's validation accuracy at its best
   epoch (the one its model keeps), checked once by train.epochs 0 from digits@prod (the warm start as loaded
   must score exactly that on the new rows' validation split). Then per seed, --new-epochs each, early stopping
   off: a warm start (digits@prod, head kept, nothing frozen, the parent's transform) and scratch (its own
   transform). Printed: the first epoch whose val_accuracy (reports/train_history.json) reaches the target, for
   each, and the warm start's mean over scratch's (target <= 25%). A run that never reaches it within
   --new-epochs counts as more than --new-epochs, and the ratio is then a bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import copy_repo, run, set_params  # noqa: E402  (sets PATH, PREFECT_HOME)

CHILD = {"ingest.labels": [5, 6, 7, 8, 9], "ingest.per_class_in": "train", "contract.min_rows": 40,
         "contract.min_class_rows": 8, "train.batch_size": 8}
VARIANTS = {
    "scratch": {"train.init.from": None, "train.init.head": "keep", "train.init.freeze": [],
                "train.init.backbone_lr_ratio": 1.0},
    "linear probe": {"train.init.from": "digits@prod", "train.init.head": "reset", "train.init.freeze": "backbone",
                     "train.init.backbone_lr_ratio": 1.0},
    "fine-tune": {"train.init.from": "digits@prod", "train.init.head": "reset", "train.init.freeze": [],
                  "train.init.backbone_lr_ratio": 1.0},
    "discriminative": {"train.init.from": "digits@prod", "train.init.head": "reset", "train.init.freeze": [],
                       "train.init.backbone_lr_ratio": 0.1},
}


def held_out(repo: Path):
    """The raw rows of the digits 5-9 test split, with their labels (every row of those classes ingested)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    set_params(repo, CHILD | VARIANTS["scratch"] | {"ingest.per_class": None, "ingest.per_class_in": "all"})
    run(["dvc", "repro", "clean"], repo)
    raw = pq.read_table(repo / "data/raw/table.parquet")
    rows = pq.read_table(repo / "data/clean/rows.parquet")
    assert rows.num_rows == raw.num_rows, "the benchmark needs every raw row kept (the digits have no repeats)"
    return raw.filter(pc.equal(rows["split"], 2))


def accuracy(repo: Path, test) -> float:
    """The child's model on the held-out rows, through its own saved transform."""
    import numpy as np
    import torch

    from tasks.data import transform
    from tasks.weights import model_from_bytes

    t = json.loads((repo / "data/clean/transform.json").read_text())
    arrays, _ = transform.apply(test, t)
    x = torch.from_numpy(np.column_stack([a.to_numpy(zero_copy_only=False) for a in arrays]).astype(np.float32))
    y = transform.label_values(test.column(t["label_column"]), t)
    module = model_from_bytes((repo / "model/model.safetensors").read_bytes(), "child")
    with torch.no_grad():
        predicted = module(x).argmax(dim=1).numpy()
    return float((predicted == y).mean())


def child(repo: Path, test, variant: str, k: int, seed: int, epochs: int) -> float:
    set_params(repo, CHILD | VARIANTS[variant] | {"ingest.per_class": k, "ingest.sample_seed": seed,
                                                 "train.seed": seed, "train.epochs": epochs})
    run(["dvc", "repro", "evaluate"], repo, timeout=1800)
    return accuracy(repo, test)


NEW_ROWS = {"ingest.labels": None, "ingest.per_class_in": "train", "train.init.head": "keep",
            "train.init.freeze": [], "train.init.backbone_lr_ratio": 1.0, "train.early_stopping.patience": 0}


def history(repo: Path) -> list[dict]:
    return json.loads((repo / "reports/train_history.json").read_text())


def split_rows(repo: Path) -> dict:
    return json.loads((repo / "reports/clean.json").read_text())["split_rows"]


def reached(repo: Path, target: float) -> int | None:
    """The first epoch whose validation accuracy is at least the target (None: not within the run)."""
    return next((e["epoch"] for e in history(repo) if e["val_accuracy"] >= target), None)


def new_rows(tmp: Path, a) -> None:
    """The third part: epochs to the parent's validation accuracy on the same task with more rows."""
    repo = copy_repo(tmp / "new-rows", master_port=29891)
    set_params(repo, NEW_ROWS | {"ingest.per_class": a.new_parent_rows, "ingest.per_class_in": "train",
                                 "train.epochs": a.parent_epochs})
    run(["git", "commit", "-qam", "the parent: digits 0-9, a label budget"], repo)
    out = run(["dvc", "repro"], repo, timeout=1800).stdout
    assert "promoted to prod" in out, out[-2000:]
    best = min(history(repo), key=lambda e: e["val_loss"])  # train.early_stopping.metric: the model kept
    target = best["val_accuracy"]
    parent_rows = split_rows(repo)

    set_params(repo, NEW_ROWS | {"ingest.per_class": None, "ingest.per_class_in": "all",
                                 "train.init.from": "digits@prod", "train.epochs": 0})
    out = run(["dvc", "repro", "evaluate"], repo, timeout=1800).stdout
    loaded = json.loads((repo / "reports/train/metrics.json").read_text())["val_accuracy"]
    rows = split_rows(repo)
    assert rows["val"] == parent_rows["val"], (rows, parent_rows)
    print(f"\nnew rows: digits 0-9, the parent on {parent_rows['train']} training rows ({a.new_parent_rows} a class, "
          f"{a.parent_epochs} epochs, in prod), the children on {rows['train']}; validation split {rows['val']} "
          f"rows: the parent {target:.4f} (epoch {best['epoch']}), as loaded by a 0-epoch warm start {loaded:.4f}")
    assert abs(loaded - target) < 1e-6, "the warm start as loaded should score the parent's validation accuracy"

    print(f"{'seed':<8}{'warm start':>12}{'scratch':>12}   first epoch with val accuracy >= {target:.4f}, "
          f"of {a.new_epochs}")
    epochs = {"warm start": [], "scratch": []}
    for seed in range(a.seeds):
        for side, start in (("warm start", "digits@prod"), ("scratch", None)):
            set_params(repo, {"train.init.from": start, "train.epochs": a.new_epochs, "train.seed": seed})
            run(["dvc", "repro", "evaluate"], repo, timeout=1800)
            epochs[side].append(reached(repo, target))
        print(f"{seed:<8}" + "".join(f"{shown(epochs[s][-1], a.new_epochs):>12}" for s in epochs))
    # a run that never reached it counts as new_epochs + 1: a lower bound for it, so the ratio is a bound too
    means = {s: statistics.mean(e if e is not None else a.new_epochs + 1 for e in xs) for s, xs in epochs.items()}
    bound = {s: any(e is None for e in xs) for s, xs in epochs.items()}
    print(f"{'mean':<8}" + "".join(f"{('>' if bound[s] else '') + f'{m:.1f}':>12}" for s, m in means.items()))
    ratio = means["warm start"] / means["scratch"]
    sign = "" if bound["warm start"] == bound["scratch"] else (">" if bound["warm start"] else "<")
    if bound["warm start"] and bound["scratch"]:
        print(f"warm / scratch: neither reached {target:.4f} in every run within {a.new_epochs} epochs "
              f"(target <= 25%)")
    else:
        print(f"warm / scratch: {sign}{100 * ratio:.0f}% of the epochs (target <= 25%)")


def shown(epoch: int | None, budget: int) -> str:
    return str(epoch) if epoch is not None else f">{budget}"


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}"


def k_shot(tmp: Path, a) -> None:
    """The first two parts: the child task 5-9 at k labels a class, and where scratch catches up."""
    repo = copy_repo(tmp / "k-shot", master_port=29890)
    set_params(repo, {"ingest.labels": [0, 1, 2, 3, 4], "train.epochs": a.parent_epochs})
    run(["git", "commit", "-qam", "the parent task: digits 0-4"], repo)
    out = run(["dvc", "repro"], repo, timeout=1800).stdout
    assert "promoted to prod" in out, out[-2000:]
    best = min(history(repo), key=lambda e: e["val_loss"])  # the epoch the parent's model keeps
    test = held_out(repo)
    print(f"parent: digits 0-4, {a.parent_epochs} epochs, val accuracy {best['val_accuracy']:.4f} (epoch "
          f"{best['epoch']}), registered in prod; child: 5-9, held-out test "
          f"{test.num_rows} rows; {a.seeds} seeds, child epochs {a.epochs}")
    acc = {v: [child(repo, test, v, a.k, s, a.epochs) for s in range(a.seeds)] for v in VARIANTS}
    print(f"\n{'variant (k = ' + str(a.k) + ')':<24}accuracy (mean ± sd over seeds)")
    for v, xs in acc.items():
        print(f"{v:<24}{spread(xs)}")
    best = max((v for v in VARIANTS if v != "scratch"), key=lambda v: statistics.mean(acc[v]))
    gain = 100 * (statistics.mean(acc[best]) - statistics.mean(acc["scratch"]))
    print(f"\n{best} over scratch at k = {a.k}: {gain:+.1f} points (target >= +10)")
    target = statistics.mean(acc[best])
    caught = a.k if statistics.mean(acc["scratch"]) >= target else None  # no more labels needed at all
    for k in [int(x) for x in a.scratch_k.split(",") if x]:
        xs = [child(repo, test, "scratch", k, s, a.epochs) for s in range(a.seeds)]
        print(f"scratch at k = {k:<10}{spread(xs)}")
        if caught is None and statistics.mean(xs) >= target:
            caught = k
    print(f"labels per class scratch needs to reach {best} at k = {a.k}: "
          + (f"{caught} ({caught / a.k:.0f}x; target >= 5x)" if caught else
             f"more than {a.scratch_k.split(',')[-1]} (> {int(a.scratch_k.split(',')[-1]) / a.k:.0f}x)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--k", type=int, default=10, help="labelled rows per class of the child task")
    ap.add_argument("--scratch-k", default="20,50,100", help="more labels for scratch, to find where it catches up")
    ap.add_argument("--epochs", type=int, default=30, help="the child's epochs (early stopping may end sooner)")
    ap.add_argument("--parent-epochs", type=int, default=8, help="each parent's epochs")
    ap.add_argument("--parts", default="k-shot,new-rows", help="k-shot (with --scratch-k), new-rows, or both")
    ap.add_argument("--new-parent-rows", type=int, default=40,
                    help="new rows: the parent's training rows of each class (of about 125)")
    ap.add_argument("--new-epochs", type=int, default=20, help="new rows: each child's epochs")
    a = ap.parse_args()
    parts = {x.strip() for x in a.parts.split(",") if x.strip()}
    if not parts or parts - {"k-shot", "new-rows"}:
        ap.error(f"--parts: k-shot, new-rows or both, got {a.parts!r}")
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
        if "k-shot" in parts:
            k_shot(Path(tmp), a)
        if "new-rows" in parts:
            new_rows(Path(tmp), a)

if __name__ == "__main__":
    main()
