"""train: an explicit training loop over a DeepSpeed engine, resumable to the exact step.

    python -m tasks.train                          # what `dvc repro train` runs
    deepspeed --num_gpus 2 --module tasks.train    # the worker side, by hand

`python -m tasks.train` checks params and data (training/launch.py), then
starts DeepSpeed's launcher, which runs this module once per rank: one rank per
visible GPU, or `train.num_procs` CPU ranks over gloo when there is none.

Checkpoints are written at the end of every epoch and every
`train.checkpoint.every_steps` optimizer steps, into a folder DVC keeps across
reruns. Each holds DeepSpeed's engine state (weights, optimizer, scheduler),
the loop's state (training/state.py: epoch, batch, history, early stopping)
and every rank's random generators, so a rerun after a crash continues exactly
where the last good checkpoint left off: the data order of an epoch is a
function of the seed and the epoch alone (training/data.py). SIGTERM
(preemption) makes every rank write a checkpoint before it exits. The final
model is the best epoch's (early stopping), saved as one safetensors file,
never with a non-finite weight. With `train.init.from`, the model starts from
a parent's weights, parts frozen or at a lower rate (training/init.py). A
continual run's strategy (continual.strategy replay, ewc or lwf) adds buffer
rows to every batch or a term to the loss (tasks/continual/strategies.py).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from tasks.continual import strategies
from tasks.data.tables import read_json, write_json
from tasks.errors import run_main
from tasks.files import split_path
from tasks.params import Continual, Train, load_params
from tasks.training import checkpoints as ckpt
from tasks.training import init as warm
from tasks.training import reshard
from tasks.training import run as runs
from tasks.training.agreement import PREEMPTED, Agreement, NonFiniteLoss, Preemption
from tasks.training.data import epoch_batches, input_dtype, load_split
from tasks.training.engine import build_engine, ds_config, zero_stage
from tasks.training.live import Live, deepspeed_output, progress
from tasks.training.loss import improved, l1_penalty, validate
from tasks.training.pruning import TrialReport
from tasks.training.state import LoopState


@dataclass
class Run:
    """This rank's run: the engine and data it trains, where its checkpoints go, what it resumed from."""

    engine: object
    rank: int
    world: int
    folder: Path
    key: str  # the fingerprint
    model_config: dict
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    dtype: torch.dtype
    cl: strategies.Strategy  # the continual strategy: replay rows in each batch, a term in the loss
    warm: bool = False  # started from a parent's weights (not: from scratch, or a stage that held none yet)

    def save(self, state: LoopState, reason: str, keep_last: int) -> str:
        """Every rank writes its part of checkpoint step<N>; rank 0 marks it complete once all are written."""
        import torch.distributed as dist

        engine, tag = self.engine, ckpt.step_tag(self.engine.global_steps)
        for p in engine.module.parameters():  # NaN weights are never checkpointed
            if not torch.isfinite(p).all():
                raise NonFiniteLoss(f"train: non-finite weights at step {engine.global_steps}; nothing saved")
        if self.rank == 0:  # a checkpoint written again (after a resume) counts only once it is whole again
            (self.folder / tag / ckpt.MARKER).unlink(missing_ok=True)
        engine.save_checkpoint(str(self.folder), tag=tag, client_state=state.shared(), save_latest=False)
        ckpt.save_rank_state(self.folder / tag, self.rank, state.own())
        dist.barrier()  # every rank's files are written
        if self.rank == 0:
            ckpt.mark_complete(self.folder / tag, {"world_size": self.world, "reason": reason,
                                                   "resumes_at": {"epoch": state.epoch, "batch": state.batch}})
            ckpt.prune(self.folder, keep_last, {state.best_tag} - {None})
        dist.barrier()
        return tag


def start(params: Train, splits: Path, transform: Path, checkpoints: Path, parent_dir: Path = Path("parent_model"),
          continual: Continual | None = None) -> tuple[Run, LoopState]:
    """Every rank: the data, the engine, and the loop state, fresh or resumed from a checkpoint."""
    import deepspeed
    import torch.distributed as dist

    from models import build
    from tasks.training import ops

    ops.build()  # before init_distributed: compiled once, under a lock a killed rank cannot leave behind
    with deepspeed_output(params.verbose):  # its start-up lines only if train.verbose
        deepspeed.init_distributed()
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(params.seed)  # the same initial weights on every rank
    if params.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    x, y, schema = load_split(split_path(splits, "train"))
    x_val, y_val, _ = load_split(split_path(splits, "val"))
    mcfg = runs.model_config(params, schema, x.shape[1], runs.n_outputs(read_json(transform, "clean transform")))
    steps_per_epoch = max(len(x) // world // params.batch_size // params.grad_accum, 1)
    cfg = ds_config(params, world, steps_per_epoch * max(params.epochs, 1))  # a schedule needs a step
    parent = [warm.read_fetched(parent_dir, params.init) if params.init.from_ and rank == 0 else None]
    dist.broadcast_object_list(parent, src=0)  # one read, and one parent on every rank (digits@prod may move)
    parent = parent[0]
    continual = continual or Continual()  # no continual section given: joint, the reference
    key = runs.fingerprint(params, splits, parent.identity["sha256"] if parent else None, continual)
    folder, stage = runs.run_dir(checkpoints, key, world), zero_stage(cfg)  # train.zero_stage, or a JSON's
    where = [runs.starting_point(params, stage, checkpoints, key, world) if rank == 0 else None]
    dist.broadcast_object_list(where, src=0)  # every rank resumes from the checkpoint rank 0 chose
    source, tag, old_world = where[0]
    universal = old_world is not None and stage > 0  # another count's ZeRO 1/2 parts, re-cut
    module, groups = build(params.model, mcfg), None
    if parent:  # the parent's weights, then its groups (a resume loads the checkpoint's over them)
        warm.check_unfreeze(params.init, stage, params.precision)
        warm.warm_start(module, params.model, parent, params.init.head)
        groups = warm.param_groups(module, params.init, params.optimizer.lr)
    cl = strategies.prepare(continual, params, splits, module, parent, stage, schema, rank)  # the parent's weights
    engine = build_engine(module, reshard.universal_loading(cfg) if universal else cfg, groups)
    cl.place(engine.device)
    torch.manual_seed(params.seed + 1 + rank)  # dropout masks differ between ranks, repeat between runs
    if rank == 0:
        runs.write_run_record(folder, key, cfg, params, mcfg, world)
    run = Run(engine, rank, world, folder, key, mcfg, x, y, x_val, y_val, input_dtype(params.precision, schema), cl,
              parent is not None)
    if not tag:
        return run, LoopState()
    if old_world is None:
        state = runs.resume(engine, source, tag, lambda d: ckpt.load_rank_state(d, rank))
        say(rank, f"train: resumed from {source / tag} (epoch {state.epoch}, batch {state.batch})")
        return run, state
    return run, continue_other_count(run, params, source, tag, old_world, universal)


def continue_other_count(run: Run, params: Train, source: Path, tag: str, old_world: int,
                         universal: bool) -> LoopState:
    """An unfinished run of another process count, continued with this one (training/reshard.py)."""
    loaded = reshard.universal_tag(tag) if universal else tag
    state = runs.resume(run.engine, source, loaded, lambda _: reshard.load_generators_and_sums(
        source / tag, run.rank, old_world, params.seed))
    if universal:
        checked, restored = reshard.check_universal_load(run.engine, source / loaded)
        say(run.rank, f"train: loaded DeepSpeed's universal checkpoint of {source / tag}: {checked} parameters "
                      f"checked against it, {restored} buffers restored from it")
    state = reshard.hand_over(state, old_world)
    if run.rank == 0:
        reshard.carry_best(source, run.folder, state.best_tag)
    say(run.rank, f"train: continuing {source / tag}, written by {old_world} processes, with {run.world} "
                  f"(train.checkpoint.reshard): epoch {state.epoch}, the rows its processes had not reached "
                  f"shared out anew")
    return state


def train(params: Train, splits: Path, transform: Path, checkpoints: Path, model_path: Path, history_path: Path,
          live_dir: Path, parent_dir: Path = Path("parent_model"), continual: Continual | None = None) -> dict:
    """Run on every rank (started by DeepSpeed's launcher); rank 0 writes the shared files."""
    warnings.filterwarnings("ignore", "`torch.distributed.all_gather_into_tensor` is deprecated",
                            FutureWarning)  # DeepSpeed's ZeRO checkpointing, once per save
    preemption = Preemption()
    run, state = start(params, splits, transform, checkpoints, parent_dir, continual)
    engine, rank, es = run.engine, run.rank, params.early_stopping
    live = Live(live_dir, state.history) if rank == 0 else None
    agreed = Agreement(preemption, rank, engine.device)
    trial = TrialReport.from_env(rank)  # inside a search: report epochs to the study, obey its pruner
    if params.epochs == 0:  # the warm start itself, checkpointed (again, on a rerun) as the model
        run.save(state, "epoch", params.checkpoint.keep_last)
        figures = validate(engine, run.x_val, run.y_val, run.dtype, params)
        if rank == 0:
            live.warm_start(figures)
        say(rank, f"train: 0 epochs: the model is {params.init.from_}'s weights as loaded (head "
                  f"{params.init.head}): " + " ".join(f"{k} {v:.4f}" for k, v in figures.items()))
    for epoch in range(state.epoch, params.epochs + 1):
        if state.stopped_early(es):
            break
        if run.warm:  # gradual unfreezing (train.init); a first run from an empty stage freezes nothing
            warm.set_trainable(engine.module, params.init, epoch)
        order = epoch_batches(len(run.x), params, epoch, rank, run.world, state.resharded)
        bar = progress(len(order), state.batch, f"epoch {epoch}/{params.epochs}", rank)  # on a terminal only
        started, done = time.perf_counter(), len(order)
        loss_sum = torch.tensor(state.loss_sum, dtype=torch.float64, device=engine.device)  # no host sync a step
        term_sum = torch.tensor(state.term_sum, dtype=torch.float64, device=engine.device)
        for b in range(state.batch, len(order)):
            idx = order[b]
            x, y = run.cl.batch(run.x[idx], run.y[idx], params.seed, epoch, int(idx[0]))  # replay: + buffer rows
            out = engine(x.to(engine.device, run.dtype)).float()
            loss, term = run.cl.loss(out, x, y.to(engine.device), engine.module, params)  # + ewc's, lwf's term
            if params.optimizer.l1:
                loss = loss + params.optimizer.l1 * l1_penalty(engine.module)
            engine.backward(loss)
            engine.step()
            loss_sum += loss.detach()
            if term is not None:
                term_sum += term
            bar.update()
            agreed.post(loss_sum, f"epoch {epoch}, batch {b + 1}")
            boundary = (b + 1) % params.grad_accum == 0
            every = params.checkpoint.every_steps
            checkpoint_now = every and boundary and engine.global_steps % every == 0 and b + 1 < len(order)
            if (agreed.stop and boundary) or checkpoint_now:
                agreed.sync(loss_sum, f"epoch {epoch}, batch {b + 1}")
                mid = replace(state, batch=b + 1, loss_sum=loss_sum.item(), loss_n=state.loss_n + b + 1 - state.batch,
                              term_sum=term_sum.item())
                tag = run.save(mid, "preempted" if agreed.stop else "step", params.checkpoint.keep_last)
                if agreed.stop:
                    say(rank, f"train: SIGTERM: checkpoint {run.folder / tag} written; rerun to resume")
                    return {"preempted": True}
        agreed.sync(loss_sum, f"epoch {epoch}, batch {done}")
        bar.close()
        state = replace(state, batch=done, loss_sum=loss_sum.item(), loss_n=state.loss_n + done - state.batch,
                        term_sum=term_sum.item())
        entry = end_of_epoch(run, state, params, epoch, seconds=time.perf_counter() - started)
        better = improved(entry[es.metric], state.best, es.metric, es.min_delta)  # metric checked with params
        state = state.end_epoch(entry, better, es.metric, ckpt.step_tag(engine.global_steps))
        run.save(state, "epoch", params.checkpoint.keep_last)
        if rank == 0:
            live.log(entry)
            write_json(history_path, state.history)
            print(f"train: epoch {epoch}/{params.epochs} " + " ".join(
                f"{k} {v:.4f}" for k, v in entry.items() if k != "epoch") + (" (best)" if better else ""), flush=True)
        if trial is not None and epoch < params.epochs and trial.prune(epoch, entry, engine.device):
            say(rank, f"train: pruned by the search after epoch {epoch}; the model is the best epoch's "
                      f"({state.best_tag})")
            if live is not None:
                live.mark("pruned_at_epoch", epoch)
            break
    if state.stopped_early(es):
        say(rank, f"train: early stop: {es.metric} did not improve for {es.patience} epoch(s); "
                  f"best {state.best:.4f} at {state.best_tag}")
    return finish(run, state, params, checkpoints, model_path, history_path)


def end_of_epoch(run: Run, state: LoopState, params: Train, epoch: int, seconds: float) -> dict:
    """The epoch's history entry: the mean training loss over every rank's batches, and rank 0's
    validation figures for all (BatchNorm's running statistics are each rank's own, as DeepSpeed leaves
    them, and rank 0's are the ones its checkpoint and the model file keep)."""
    import torch.distributed as dist

    totals = torch.tensor([state.loss_sum, state.loss_n, state.term_sum], dtype=torch.float64,
                          device=run.engine.device)
    dist.all_reduce(totals)  # on the engine's device: NCCL reduces no CPU tensor
    metrics = [validate(run.engine, run.x_val, run.y_val, run.dtype, params)]
    dist.broadcast_object_list(metrics, src=0)
    n = max(totals[1].item(), 1.0)
    term = {run.cl.term: totals[2].item() / n} if run.cl.term else {}  # the continual strategy's, a batch's mean
    return {"epoch": epoch, "train_loss": totals[0].item() / n, **term, **metrics[0],
            "lr": run.engine.get_lr()[0], "seconds": seconds}  # seconds: the training steps (this start's share)


def finish(run: Run, state: LoopState, params: Train, checkpoints: Path, model_path: Path,
           history_path: Path) -> dict:
    """The best checkpoint's weights into the model file; rank 0 drops the runs of other params or data."""
    import torch.distributed as dist

    best = state.best_tag or ckpt.step_tag(run.engine.global_steps)
    run.engine.load_checkpoint(str(run.folder), tag=best, load_module_only=True)  # the final model: the best
    runs.write_model(run.engine, run.rank, model_path, runs.model_metadata(params, run.model_config, run.key,
                                                                           run.folder, best))
    if run.rank == 0:
        write_json(history_path, state.history)
        runs.prune_other_runs(checkpoints, keep=run.folder.name)
    dist.barrier()
    return {"fingerprint": run.key, "epochs_run": len(state.history), "best_checkpoint": best,
            "early_stopped": state.stopped_early(params.early_stopping), "world_size": run.world}


def say(rank: int, line: str) -> None:
    if rank == 0:
        print(line, flush=True)


def main() -> None:
    p = run_main(load_params)
    if "LOCAL_RANK" not in os.environ:  # the DVC side: check, then start the ranks
        from tasks.training.launch import launch, launcher_command, launcher_env, precheck

        run_main(lambda: precheck(p))
        code = launch(launcher_command(p.train), launcher_env(p.train))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # with torch loaded, the interpreter's own teardown takes 0.6-0.8 s (benchmarks/startup.py)

    import torch.distributed as dist

    result = run_main(lambda: train(p.train, p.paths.splits, p.paths.transform, p.paths.checkpoints, p.paths.model,
                                    p.paths.train_history, p.paths.train_live, p.paths.parent, p.continual))
    sys.stdout.flush()
    sys.stderr.flush()
    dist.destroy_process_group()
    os._exit(PREEMPTED if result.get("preempted") else 0)  # ZeRO-3 over gloo can abort at interpreter exit


if __name__ == "__main__":
    main()
