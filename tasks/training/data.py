"""The training data as the ranks see it: the split tensors, and each epoch's order of batches.

    x, y, schema = load_split(split_path(splits, "train"))
    order = epoch_batches(len(x), params, epoch, rank, world, resharded)   # (batches, batch) row indices

The order of an epoch is a function of (seed, epoch) alone, so a resumed run
sees exactly the batches the interrupted one would have, and a DDP or Lightning
loop given the same function trains on the same rows (benchmarks/).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from tasks.data.tables import LABEL, feature_names, read_model_table, tokens_of
from tasks.params import Train
from tasks.training import reshard


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor, pa.Schema]:
    """A split's features (float32, one column per feature) and labels, and its schema."""
    table = read_model_table(path)
    x = np.column_stack([table[c].to_numpy() for c in feature_names(table.schema)]).astype(np.float32)
    return torch.from_numpy(x), torch.from_numpy(table[LABEL].to_numpy().copy()), table.schema


def epoch_order(n: int, seed: int, epoch: int, rank: int, world: int, batch: int) -> torch.Tensor:
    """This rank's row indices for one epoch, in batches: a function of (seed, epoch) alone, so a resumed
    run sees exactly the order the interrupted one would have."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    per_rank = n // world // batch * batch  # every rank the same whole number of batches
    return order[rank::world][:per_rank].view(-1, batch)


def epoch_batches(n: int, params: Train, epoch: int, rank: int, world: int, resharded: dict | None) -> torch.Tensor:
    """This rank's batches of `epoch`: epoch_order's; for an epoch that resharded runs took over midway
    (`handovers`: each count that ran it and the batches it had done), the rows not reached at the last
    handover, shared out among these processes (reshard.py). Cut to whole optimizer steps."""
    if not resharded or resharded["epoch"] != epoch:
        order = epoch_order(n, params.seed, epoch, rank, world, params.batch_size)
    else:
        (first, done), *later = resharded["handovers"]
        order = torch.stack([epoch_order(n, params.seed, epoch, r, first, params.batch_size) for r in range(first)])
        for count, next_done in later:  # what each later count was dealt, and how far it got
            order = torch.stack([reshard.rest_of_epoch(order, done, r, count) for r in range(count)])
            done = next_done
        order = reshard.rest_of_epoch(order, done, rank, world)
    return order[:len(order) // params.grad_accum * params.grad_accum]  # epochs end on an optimizer step


def input_dtype(precision: str, schema: pa.Schema) -> torch.dtype:
    """The dtype the features are fed in: the training precision for values, float32 for token ids, which
    bf16 rounds into other tokens above 256 (1999 -> 2000) and fp16 above 2048; the model embeds them."""
    if tokens_of(schema):
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
