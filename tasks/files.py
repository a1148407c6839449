"""File names that more than one stage (or the registry) agrees on: one place, so they cannot drift.

    from tasks.files import TOKENIZER_FILE, RUN_FILE, split_path, replay_paths
    split_path(p.paths.splits, "train")   # data/splits/train.parquet
    rows, experience = replay_paths(p.paths.splits)   # data/splits/replay.parquet, data/splits/replay.json

The folders themselves are declared in params.yaml's `paths` (templated into
dvc.yaml); these are the names of the files a stage writes inside them.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"  # augment writes it into paths.splits for text data; predict and register read it
RUN_FILE = "run.json"  # train writes it beside each run's checkpoints: fingerprint, DeepSpeed config, model config
DS_CONFIG_FILE = "ds_config.json"  # beside the checkpoints too, usable as is with DeepSpeed's --deepspeed_config
SPLIT_SUFFIX = ".parquet"
BUFFER_TABLE, BUFFER_RECORD = "buffer.parquet", "buffer.json"  # in paths.buffer: the replay buffer and its record
REPLAY_RECORD = "replay.json"  # augment, beside the replay split: each buffer row's experience, and the current one
MATRIX_FILE = "matrix.json"  # in paths.continual: the accuracy matrix over every data version's test set
CONTINUAL_METRICS = "metrics.json"  # ... its headline figures (DVC metrics)
TREND_FILE = "trend.json"  # ... the average accuracy after each data version (DVC plot)


def split_path(splits: Path, name: str) -> Path:
    """The file of split `name` (train, val, test, or replay: the buffer) in the splits folder augment writes."""
    return Path(splits) / f"{name}{SPLIT_SUFFIX}"


def replay_paths(splits: Path) -> tuple[Path, Path]:
    """The replay buffer's rows (the `replay` split, in the model table's format) and replay.json (each row's
    experience, and the newest one) in the splits folder augment writes."""
    return split_path(splits, "replay"), Path(splits) / REPLAY_RECORD
