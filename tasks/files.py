"""File names that more than one stage (or the registry) agrees on: one place, so they cannot drift.

    from tasks.files import TOKENIZER_FILE, RUN_FILE, split_path, replay_paths
    split_path(p.paths.splits, "train")   # data/splits/train.parquet
    rows, experience = replay_paths(p.paths.splits)   # data/splits/replay.arrow, data/splits/replay.json

The folders themselves are declared in params.yaml's `paths` (templated into
dvc.yaml); these are the names of the files a stage writes inside them.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"  # augment writes it into paths.splits for text data; predict and register read it
RUN_FILE = "run.json"  # train writes it beside each run's checkpoints: fingerprint, DeepSpeed config, model config
DS_CONFIG_FILE = "ds_config.json"  # beside the checkpoints too, usable as is with DeepSpeed's --deepspeed_config
SPLIT_SUFFIX = ".parquet"
# augment writes the replay buffer (tasks/continual/) into paths.splits: its rows, in the model table's format
# (split "replay"), and beside them {"current_experience": k, "experience": [the data version of each row]}
REPLAY_ROWS_FILE = "replay.arrow"
REPLAY_EXPERIENCE_FILE = "replay.json"


def split_path(splits: Path, name: str) -> Path:
    """The file of split `name` (train, val or test) in the splits folder augment writes."""
    return Path(splits) / f"{name}{SPLIT_SUFFIX}"


def replay_paths(splits: Path) -> tuple[Path, Path]:
    """The replay buffer's rows (Arrow IPC) and each row's experience (JSON) in the splits folder augment writes."""
    return Path(splits) / REPLAY_ROWS_FILE, Path(splits) / REPLAY_EXPERIENCE_FILE
