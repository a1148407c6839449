"""Benchmark: the clean stage against a straightforward pandas version of the same steps.

    python benchmarks/clean_vs_pandas.py [--rows N] [--repeat R] [--small-batch B] [--profile]

Generates a seeded table (8 float columns with missing values and outliers,
2 int columns, 3 categorical columns with missing values, an int label with a
few missing, about 1% exact duplicate rows), then cleans it with
tasks.clean.clean (outliers clipped at the 1%/99% training quantiles) and with
pandas, each in a fresh subprocess. Both write the same format (an Arrow IPC
file with LZ4 buffers). Each process first cleans a 20,000-row table of the
same shape, so that what either side loads on first use (library code,
kernels, thread pools) is not counted as memory spent on the data; then it
cleans the big table R times. Prints the best-of-R seconds of the clean call,
the peak RSS (VmHWM) above the RSS after the warm-up, that peak over the
table's in-memory size (Arrow nbytes), and pandas seconds / stage seconds.
Targets: the stage at least 5x faster than pandas, peak at most 2x the table.
The stage is also run with a smaller batch_rows to show how memory follows it.
--profile prints the stage's top 15 functions by cumulative time (cProfile sees the
main thread only: work done in the stage's thread pools shows as lock waits).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tasks.data.tables import read_table, sha256_file, write_json, write_table  # noqa: E402
from tasks.params import Clean  # noqa: E402

OUTLIERS, TEST, VAL = (0.01, 0.99), Clean().split.test_fraction, Clean().split.val_fraction
WARM_ROWS = 20_000


def make_table(n: int, seed: int = 0) -> pa.Table:
    """n rows, about 1% of them exact copies of earlier-generated rows, in shuffled order."""
    rng = np.random.default_rng(seed)
    m = n - n // 100
    cols = {}
    for i in range(8):
        x = rng.normal(10.0 * i, 1.0 + i, m)
        x[rng.random(m) < 0.005] *= 100.0  # outliers
        cols[f"x{i}"] = pa.array(x, mask=rng.random(m) < 0.02)
    for i in range(2):
        cols[f"n{i}"] = pa.array(rng.integers(0, 1000 * (i + 1), m))
    for i, k in enumerate((5, 12, 30)):
        idx = pa.array(rng.integers(0, k, m, dtype=np.int32), mask=rng.random(m) < 0.01)
        cols[f"c{i}"] = pa.DictionaryArray.from_arrays(idx, [f"cat{i}_{j:02d}" for j in range(k)]).dictionary_decode()
    cols["label"] = pa.array(rng.integers(0, 5, m), mask=rng.random(m) < 0.001)
    order = np.concatenate([np.arange(m), rng.integers(0, m, n - m)])
    rng.shuffle(order)
    return pa.table(cols).take(order)


def snapshot(table: pa.Table, folder: Path) -> None:
    """The table as ingest leaves it: a Parquet snapshot (write_table) and its manifest."""
    write_table(table, folder / "raw.parquet")
    write_json(folder / "manifest.json", {"sha256": sha256_file(folder / "raw.parquet"), "label_column": "label",
                                          "text_column": None, "image_shape": None, "version": folder.name})


def pandas_clean(raw: Path, out: Path) -> None:
    """The same steps, written the obvious pandas way."""
    import pandas as pd

    df = pd.read_parquet(raw).drop_duplicates().dropna(subset=["label"])
    u = pd.util.hash_pandas_object(df, index=False).to_numpy() / 2.0**64
    split = np.where(u < TEST, "test", np.where(u < TEST + VAL, "val", "train"))
    train = df[split == "train"]
    num = [c for c in df.columns if c != "label" and pd.api.types.is_numeric_dtype(df[c])]
    cat = [c for c in df.columns if c != "label" and c not in num]
    median = train[num].median()
    filled = train[num].fillna(median)
    lo, hi = filled.quantile(OUTLIERS[0]), filled.quantile(OUTLIERS[1])
    clipped = filled.clip(lo, hi, axis=1)
    mean, std = clipped.mean(), clipped.std(ddof=0).replace(0.0, 1.0)
    parts = [((df[num].fillna(median).clip(lo, hi, axis=1) - mean) / std).astype(np.float32)]
    for c in cat:
        categories = sorted(set(train[c].dropna()) | ({"(missing)"} if train[c].isna().any() else set()))
        values = df[c].fillna("(missing)").astype(pd.CategoricalDtype(categories))
        parts.append(pd.get_dummies(values, prefix=c, prefix_sep="=", dtype=np.float32))
    result = pd.concat(parts, axis=1)
    result["label"] = pd.Categorical(df["label"]).codes.astype(np.int64)
    result["split"] = split
    result.reset_index(drop=True).to_feather(out, compression="lz4")  # the stage's format: Arrow IPC, LZ4


def rss_mb(key: str = "VmHWM") -> float:
    """This process's peak (VmHWM) or current (VmRSS) resident memory. Not ru_maxrss on Linux: that is
    carried over from the parent through fork and exec, so it would start at the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) / 2**10
    except FileNotFoundError:  # macOS: ru_maxrss in bytes
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux; elsewhere the peak stays the process's)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def child(kind: str, work: Path, repeat: int, batch_rows: int, profile: bool) -> None:
    """Runs in a fresh process: one warm-up run on the small table, then time the clean call on the big
    one; print seconds and the peak RSS above the RSS after the warm-up, as JSON."""
    if kind == "stage":
        from tasks.clean import clean

        params = Clean(outliers=OUTLIERS, batch_rows=batch_rows, per_column=True)  # pandas scales per column
        run = lambda d: clean(params, d / "raw.parquet", d / "manifest.json", d / "out.arrow",  # noqa: E731
                              d / "transform.json", d / "report.json")
    else:
        run = lambda d: pandas_clean(d / "raw.parquet", d / "out.arrow")  # noqa: E731
    # the warm-up loads what either side loads on first use (library code, kernels, thread pools), which
    # is not memory spent on the data
    run(work / "warm")
    base, times = rss_mb("VmRSS"), []
    reset_peak()
    big = work / f"{kind}-{batch_rows}"
    big.mkdir(exist_ok=True)
    for name in ("raw.parquet", "manifest.json"):
        (big / name).symlink_to(work / name)
    for _ in range(repeat):
        start = time.perf_counter()
        run(big)
        times.append(time.perf_counter() - start)
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run, big)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(15)
    print(json.dumps({"seconds": min(times), "base_mb": base, "peak_mb": rss_mb(), "out": str(big / "out.arrow")}))


def measure(kind: str, work: Path, args, batch_rows: int, profile: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--work", str(work), "--repeat", str(args.repeat),
           "--batch-rows", str(batch_rows)] + (["--profile"] if profile else [])
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    out = read_table(Path(r["out"]))
    split = out["split"].value_counts().to_pylist()
    return r | {"rows": sum(s["counts"] for s in split), "features": out.num_columns - 2,
                "split": {s["values"]: s["counts"] for s in split}}


def batches(raw: Path, batch_rows: int) -> int:
    from tasks.clean import Raw

    return sum(1 for _ in Raw(raw, {}).batches(batch_rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs of each")
    ap.add_argument("--small-batch", type=int, default=16_384, help="batch_rows of the extra stage run; 0: none")
    ap.add_argument("--profile", action="store_true", help="cProfile one more stage run, top 15 cumulative")
    ap.add_argument("--child", choices=["stage", "pandas"], help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--batch-rows", type=int, default=Clean().batch_rows, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.child, args.work, args.repeat, args.batch_rows, args.profile)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = make_table(args.rows)
        size_mb = table.nbytes / 2**20
        snapshot(table, work)
        del table
        snapshot(make_table(WARM_ROWS, seed=1), work / "warm")
        default = Clean().batch_rows
        runs = {"pandas": ("pandas", default), f"stage (batch_rows={default})": ("stage", default)}
        if args.small_batch:
            runs[f"stage (batch_rows={args.small_batch})"] = ("stage", args.small_batch)
        results = {name: measure(kind, work, args, b, args.profile and b == default and kind == "stage")
                   for name, (kind, b) in runs.items()}
        n_batches = {b: batches(work / "raw.parquet", b) for _, b in runs.values()}

    base = results["pandas"]
    print(f"\n{args.rows:,} rows, {size_mb:.0f} MB in memory (Arrow), {os.cpu_count()} cores, best of {args.repeat}")
    print(f"{'':28}{'seconds':>9}{'peak MB':>9}{'delta MB':>10}{'delta/table':>13}{'pandas/this':>13}"
          f"{'rows out':>10}{'features':>10}")
    for name, r in results.items():
        delta = r["peak_mb"] - r["base_mb"]
        print(f"{name:28}{r['seconds']:9.2f}{r['peak_mb']:9.0f}{delta:10.0f}{delta / size_mb:13.2f}"
              f"{base['seconds'] / r['seconds']:13.2f}{r['rows']:10,}{r['features']:10}")
    for name, (kind, b) in runs.items():
        if kind == "stage":
            print(f"{name}: {n_batches[b]} batches (ceil(rows / batch_rows) = {math.ceil(args.rows / b)})")

    stage = results[f"stage (batch_rows={default})"]
    rows_ok = abs(stage["rows"] - base["rows"]) <= 0.005 * base["rows"]
    print(f"\nagree: rows kept {stage['rows']:,} vs {base['rows']:,} ({'ok' if rows_ok else 'DIFFER'}), "
          f"features {stage['features']} vs {base['features']} "
          f"({'ok' if stage['features'] == base['features'] else 'DIFFER'})")
    print(f"splits: stage {stage['split']}, pandas {base['split']}")
    speedup, mem = base["seconds"] / stage["seconds"], (stage["peak_mb"] - stage["base_mb"]) / size_mb
    print(f"target >= 5x faster than pandas: {speedup:.2f}x {'met' if speedup >= 5 else 'NOT met'}")
    print(f"target peak <= 2x table size:    {mem:.2f}x {'met' if mem <= 2 else 'NOT met'}")


if __name__ == "__main__":
    main()
