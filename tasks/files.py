"""File names that more than one stage (or the registry) agrees on: one place, so they cannot drift.

    from tasks.files import TOKENIZER_FILE, RUN_FILE, split_path
    split_path(p.paths.splits, "train")   # data/splits/train.parquet

The folders themselves are declared in params.yaml's `paths` (templated into
dvc.yaml); these are the names of the files a stage writes inside them.
"""

from __future__ import annotations

from pathlib import Path

TOKENIZER_FILE = "tokenizer.json"  # augment writes it into paths.splits for text data; predict and register read it
RUN_FILE = "run.json"  # train writes it beside each run's checkpoints: fingerprint, DeepSpeed config, model config
DS_CONFIG_FILE = "ds_config.json"  # beside the checkpoints too, usable as is with DeepSpeed's --deepspeed_config
SPLIT_SUFFIX = ".parquet"


def split_path(splits: Path, name: str) -> Path:
    """The file of split `name` (train, val or test) in the splits folder augment writes."""
    return Path(splits) / f"{name}{SPLIT_SUFFIX}"
