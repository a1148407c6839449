"""What train's loop does for continual.strategy replay, ewc and lwf (joint and naive: nothing; augment picks the rows).

    check(p.continual, p.train, p.paths.splits, stage, schema)   # before any rank starts: every refusal at once
    # every rank, `module` holding the warm start's weights, before deepspeed.initialize:
    cl = prepare(p.continual, p.train, p.paths.splits, module, parent, stage, schema, rank)
    cl.place(engine.device)                                   # the engine built: tensors there, rank 0's Fisher
    x, y = cl.batch(x, y, p.train.seed, epoch, int(idx[0]))   # replay: rows_per_batch buffer rows appended
    loss, term = cl.loss(out, x, y, engine.module, p.train)   # the task loss plus the strategy's term
    fingerprint_parts(p.continual, p.paths.splits)            # what of it shapes the weights (training/run.py)

- replay: each batch of new rows gets `buffer.rows_per_batch` rows of the replay buffer
  (`replay.parquet` in the splits folder), drawn by a generator seeded from (train.seed, epoch, the batch's
  first row: an epoch's order is a permutation, so no two batches share it), never a generator carried
  along: a resumed run, or one resharded to another process count, draws what a batch of the same rows
  would have. With replacement when the buffer is smaller. The replayed rows' share of the loss is logged.
- ewc (Kirkpatrick et al. 2017): the diagonal empirical Fisher of the loss at the parent's weights, over the
  buffer rows of earlier data versions (`replay.json`: experience < current_experience), one row at a time
  in eval mode (no dropout, BatchNorm's statistics untouched; a loop works for every family, the LSTM too),
  on rank 0 (on the CPU, before the engine exists), broadcast to the others; the loss gets ewc.weight / 2 *
  sum F (w - w_parent)^2, in fp32. w_parent: the weights as the warm start left them (with train.init.head
  reset, the fresh head's). Refused under ZeRO stage 3, which partitions the weights the penalty needs whole.
- lwf (Li and Hoiem 2016): the parent, rebuilt from its file as a plain frozen module in eval mode (so it
  works under every ZeRO stage), gives soft targets on every batch; the loss gets lwf.weight * T^2 *
  KL(softmax(teacher / T) || softmax(student / T)) over the classes the parent has seen (the labels of the
  buffer's earlier rows; every class it has an output for when there are none).

Hand-written, not Avalanche's strategies: those wrap their own training loop and draw replay batches from
a stateful sampler, where this loop is DeepSpeed's engine, resumable to the exact step; each term is a
few lines of torch.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

from tasks.data.tables import LABEL, feature_names, read_json, read_table, sha256_file
from tasks.errors import InputError
from tasks.files import replay_paths
from tasks.params import Continual, Train
from tasks.training.loss import loss_fn

USES_BUFFER = ("replay", "ewc", "lwf")
TERM = {"replay": "replay_loss", "ewc": "ewc_penalty", "lwf": "distill_loss"}  # the history entry's key


@dataclass(frozen=True)
class Buffer:
    """The replay buffer as augment wrote it: rows (as load_split gives a split), each row's data version."""

    x: torch.Tensor
    y: torch.Tensor
    experience: torch.Tensor  # int64, one per row
    current: int  # this run's data version: rows with experience < current are the parent's earlier data

    def old(self) -> torch.Tensor:
        return self.experience < self.current


def read_buffer(splits, schema: pa.Schema | None = None) -> Buffer:
    """replay.parquet and replay.json, checked against each other and (given the training split's schema)
    against the training rows: the same features, the same label type."""
    from tasks.training.data import load_split

    rows, index = replay_paths(splits)
    table = read_table(rows)  # memory-mapped; read_model_table (load_split) refuses a table without rows
    if table.num_rows:
        x, y, own = load_split(rows)
    else:  # a buffer not built yet (a first data version): no rows to replay
        own = table.schema
        if LABEL not in own.names:
            raise InputError(f"{rows}: no {LABEL!r} column; not a replay buffer augment wrote")
        x = torch.zeros(0, len(feature_names(own)))
        y = torch.zeros(0, dtype=torch.float32 if pa.types.is_floating(own.field(LABEL).type) else torch.int64)
    record = read_json(index, "the replay buffer's experience index")
    current, experience = (record.get("current_experience"), record.get("experience")) if isinstance(
        record, dict) else (None, None)
    if (not isinstance(current, int) or not isinstance(experience, list)
            or not all(isinstance(e, int) and not isinstance(e, bool) for e in experience)):
        raise InputError(f"{index}: expected {{\"current_experience\": k, \"experience\": [one int per row of "
                         f"{rows.name}]}}")
    if len(experience) != len(x):
        raise InputError(f"{index}: {len(experience)} experience values for the {len(x)} rows of {rows}")
    if schema is not None:
        if feature_names(own) != feature_names(schema):
            raise InputError(f"{rows}: the replay rows' features are not the training split's "
                             f"({len(feature_names(own))} columns against {len(feature_names(schema))}); rerun augment")
        if own.field(LABEL).type != schema.field(LABEL).type:
            raise InputError(f"{rows}: label is {own.field(LABEL).type}, the training split's "
                             f"{schema.field(LABEL).type}; rerun augment")
    return Buffer(x, y, torch.tensor(experience, dtype=torch.int64), current)


def effective(continual: Continual, params: Train, warm: bool) -> Continual:
    """The strategy this run follows: ewc and lwf keep a parent close, so the first run of a loop, which
    starts from scratch because the stage holds no version yet (train.init.unassigned: scratch), trains
    as naive; with train.init.from null they are refused (check)."""
    if continual.strategy in ("ewc", "lwf") and params.init.from_ and not warm:
        return continual.model_copy(update={"strategy": "naive"})
    return continual


def check(continual: Continual, params: Train, splits, stage: int, schema: pa.Schema | None = None
          ) -> Buffer | None:
    """Every reason the strategy cannot run, at once (an InputError naming the keys and the file); the
    buffer when the strategy reads it (checked against the training split's schema, when given)."""
    s, problems = continual.strategy, []
    if s in ("ewc", "lwf") and not params.init.from_:
        problems.append(f"continual.strategy {s} needs a parent to keep close to, and train.init.from is null")
    if s == "ewc" and stage == 3:
        problems.append("continual.strategy ewc needs whole weights on every rank, and train.zero_stage 3 "
                        "partitions them; use ZeRO stage 0, 1 or 2, or another strategy")
    if s == "lwf" and params.loss != "cross_entropy":
        problems.append(f"continual.strategy lwf distils class probabilities; train.loss {params.loss} is a "
                        f"regression's")
    buffer = None
    if s in USES_BUFFER:
        try:
            buffer = read_buffer(splits, schema)
        except InputError as e:
            problems.append(f"continual.strategy {s}: {e}")
    if buffer is not None and s == "replay" and not len(buffer.x):
        problems.append(f"continual.strategy replay: {replay_paths(splits)[0]} holds no row to replay; use "
                        f"naive, or build a buffer first (continual.buffer.size)")
    if buffer is not None and s == "ewc" and not buffer.old().any():
        problems.append(f"continual.strategy ewc: {replay_paths(splits)[1]} lists no row of an earlier data "
                        f"version (experience < current_experience {buffer.current}): no Fisher information to "
                        f"weigh the parent's weights by")
    if problems:
        raise InputError("; ".join(problems))
    return buffer


def fingerprint_parts(continual: Continual, splits) -> list[str]:
    """What of the strategy shapes the weights: its name, its own params, the buffer's bytes when read."""
    s = continual.strategy
    own = {"replay": {"rows_per_batch": continual.buffer.rows_per_batch}, "ewc": continual.ewc.model_dump(),
           "lwf": continual.lwf.model_dump()}.get(s, {})
    parts = [json.dumps({"strategy": s, **own}, sort_keys=True)]
    if s in USES_BUFFER:
        for path in replay_paths(splits):
            try:
                parts.append(sha256_file(path))
            except FileNotFoundError:
                raise InputError(f"{path}: not found; continual.strategy {s} reads the replay buffer "
                                 f"augment writes") from None
    return parts


def replay_rows(n: int, k: int, seed: int, epoch: int, batch: int) -> torch.Tensor:
    """k row indices into a buffer of n for the batch identified by `batch` (its first row's index) in `epoch`:
    a function of (seed, epoch, batch) alone; without replacement when n >= k."""
    digest = hashlib.sha256(f"replay:{seed}:{epoch}:{batch}".encode()).digest()
    g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randperm(n, generator=g)[:k] if n >= k else torch.randint(n, (k,), generator=g)


def sample_loss(params: Train):
    """The per-row negative log-likelihood the Fisher is taken of: cross-entropy without label smoothing, or
    the regression's own loss."""
    if params.loss == "cross_entropy":
        return lambda out, y: F.cross_entropy(out, y)
    return lambda out, y: loss_fn(out, y, params)


def diagonal_fisher(module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss) -> dict[str, torch.Tensor]:
    """The mean over rows of each parameter's squared per-row gradient of loss(module(x_i), y_i), in eval
    mode; every parameter (frozen ones too: they may unfreeze), fp32. The module is left as it was."""
    params = dict(module.named_parameters())
    modes, wanted = {m: m.training for m in module.modules()}, {n: p.requires_grad for n, p in params.items()}
    sums = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
    module.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        for i in range(len(x)):
            grads = torch.autograd.grad(loss(module(x[i:i + 1]).float(), y[i:i + 1]), list(params.values()),
                                        allow_unused=True)
            for n, g in zip(params, grads):
                if g is not None:
                    sums[n] += g.float().pow(2)
    finally:
        for m, mode in modes.items():  # each as it was (a frozen BatchNorm may be in eval: training/init.py)
            m.train(mode)
        for n, p in params.items():
            p.requires_grad_(wanted[n])
    return {n: s / max(len(x), 1) for n, s in sums.items()}


def ewc_penalty(module: nn.Module, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum F (w - w_parent)^2 over the module's parameters, in fp32 whatever the weights' dtype."""
    return sum((fisher[n] * (p.float() - anchor[n]).pow(2)).sum() for n, p in module.named_parameters())


def distillation(student: torch.Tensor, teacher: torch.Tensor, classes: torch.Tensor, temperature: float
                 ) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)) over `classes`, the batch's mean, in fp32."""
    s = F.log_softmax(student.float()[:, classes] / temperature, dim=1)
    t = F.log_softmax(teacher.float()[:, classes] / temperature, dim=1)
    return F.kl_div(s, t, log_target=True, reduction="batchmean") * temperature ** 2


@dataclass
class Strategy:
    """One run's continual strategy: what its batches get and what its loss adds."""

    name: str
    continual: Continual
    buffer: Buffer | None = None
    fisher: dict = field(default_factory=dict)  # ewc: per parameter, and the parent's weights
    anchor: dict = field(default_factory=dict)
    teacher: nn.Module | None = None  # lwf: the parent, frozen
    classes: torch.Tensor | None = None  # lwf: the output indices the parent has seen

    @property
    def term(self) -> str | None:
        """The history entry's key for this strategy's term, or None."""
        return TERM.get(self.name)

    def place(self, device, rank: int = 0) -> None:
        """Once the engine is built: the tensors on its device, rank 0's Fisher on every rank."""
        import torch.distributed as dist

        for d in (self.fisher, self.anchor):
            for n in d:
                d[n] = d[n].to(device)
        if self.fisher and dist.is_initialized():
            for n in sorted(self.fisher):  # the same order on every rank
                dist.broadcast(self.fisher[n], src=0)
        if self.teacher is not None:
            self.teacher.to(device)
            self.classes = self.classes.to(device)

    def batch(self, x: torch.Tensor, y: torch.Tensor, seed: int, epoch: int, first_row: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch the model sees: with replay, rows_per_batch buffer rows after the new ones."""
        if self.name != "replay":
            return x, y
        idx = replay_rows(len(self.buffer.x), self.continual.buffer.rows_per_batch, seed, epoch, first_row)
        return torch.cat([x, self.buffer.x[idx]]), torch.cat([y, self.buffer.y[idx]])

    def loss(self, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor, module: nn.Module, params: Train
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss to minimise and the strategy's term as logged (detached), or None."""
        loss = loss_fn(out, y, params)
        if self.name == "replay":  # part of the loss already: the replayed rows' own loss, as shown
            k = self.continual.buffer.rows_per_batch
            return loss, loss_fn(out[-k:].detach(), y[-k:], params)
        if self.name == "ewc":
            term = self.continual.ewc.weight / 2 * ewc_penalty(module, self.fisher, self.anchor)
        elif self.name == "lwf":
            with torch.no_grad():
                teacher = self.teacher(x.to(out.device, torch.float32))
            term = self.continual.lwf.weight * distillation(out, teacher, self.classes, self.continual.lwf.temperature)
        else:
            return loss, None
        return loss + term, term.detach()


def prepare(continual: Continual, params: Train, splits, module: nn.Module, parent, stage: int,
            schema: pa.Schema, rank: int = 0) -> Strategy:
    """The strategy for this run, on every rank, with `module` holding the warm start's weights (before the
    engine is built): checked, its buffer read; ewc's Fisher (rank 0) and anchor; lwf's teacher."""
    continual = effective(continual, params, parent is not None)
    buffer, s = check(continual, params, splits, stage, schema), continual.strategy
    run = Strategy(s, continual, buffer)
    if buffer is None:
        return run
    old = buffer.old()
    if s == "ewc":
        run.anchor = {n: p.detach().float().clone() for n, p in module.named_parameters()}
        run.fisher = (diagonal_fisher(module, buffer.x[old], buffer.y[old], sample_loss(params)) if rank == 0
                      else {n: torch.zeros_like(a) for n, a in run.anchor.items()})
    if s == "lwf":
        run.teacher = teacher_of(parent)
        outputs = min(run.teacher.output().out_features, module.output().out_features)
        seen = torch.unique(buffer.y[old]) if old.any() else torch.arange(outputs)
        run.classes = seen[seen < outputs]
        if not len(run.classes):
            raise InputError(f"continual.strategy lwf: none of the classes of the buffer's earlier rows "
                             f"({seen.tolist()}) is one of the parent's {outputs} outputs")
    return run


def teacher_of(parent) -> nn.Module:
    """The parent as a plain module (training/init.py's Parent: its family, config and weights), frozen."""
    from models import build

    teacher = build(parent.model, parent.config)
    teacher.load_state_dict(parent.state)
    return teacher.eval().requires_grad_(False)
