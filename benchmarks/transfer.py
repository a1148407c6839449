"""Benchmark: transfer learning on the digits, through the real pipeline (DVC, DeepSpeed, the registry).

    python benchmarks/transfer.py                          # 5 seeds, k = 10, scratch also at k = 20, 50, 100
    python benchmarks/transfer.py --seeds 2 --scratch-k 50 --epochs 20

The parent task is the digits 0-4 (every row), trained from scratch and registered in prod; the child task
is 5-9 with k labelled rows per class (ingest.per_class, a seeded sample: ingest.sample_seed = the seed).
Each child is one `dvc repro evaluate` of the same repository with its params:

- scratch:        train.init.from null, the child's own fitted preprocessing;
- linear probe:   from digits@prod, a new head, the backbone frozen;
- fine-tune:      from digits@prod, a new head, everything trained at one rate;
- discriminative: from digits@prod, a new head, the backbone at a tenth of the head's rate.

A child's own test split holds a handful of rows at k = 10, so every child is scored on one larger set: the
test split of all the digits 5-9 (the same rows whatever the sample, as a row's split follows from its hash),
read raw and put through each child's own saved transform, as load_model would. Printed: accuracy per
variant (mean and spread over the seeds), the fine-tuned ratio of points over scratch (target >= 10), and
the smallest k at which scratch catches up with the best transfer variant at k (target >= 5x k).
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

CHILD = {"ingest.labels": [5, 6, 7, 8, 9], "contract.min_rows": 40, "contract.min_class_rows": 8,
         "train.batch_size": 8}
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

    set_params(repo, CHILD | VARIANTS["scratch"] | {"ingest.per_class": None})
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


def spread(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.3f} ± {statistics.pstdev(xs):.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--k", type=int, default=10, help="labelled rows per class of the child task")
    ap.add_argument("--scratch-k", default="20,50,100", help="more labels for scratch, to find where it catches up")
    ap.add_argument("--epochs", type=int, default=30, help="the child's epochs (early stopping may end sooner)")
    ap.add_argument("--parent-epochs", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="transfer-bench-") as tmp:
        repo = copy_repo(Path(tmp), master_port=29890)
        set_params(repo, {"ingest.labels": [0, 1, 2, 3, 4], "train.epochs": a.parent_epochs})
        run(["git", "commit", "-qam", "the parent task: digits 0-4"], repo)
        out = run(["dvc", "repro"], repo, timeout=1800).stdout
        assert "promoted to prod" in out, out[-2000:]
        test = held_out(repo)
        print(f"parent: digits 0-4, {a.parent_epochs} epochs, registered in prod; child: 5-9, held-out test "
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


if __name__ == "__main__":
    main()
