"""A warm start (train.init): the child model begins with its parent's weights, parts frozen or slower.

    parent = read_fetched(Path("parent_model"), init)         # what the parent stage fetched for train.init.from
    parent = read_parent("digits@prod")                 # or a .safetensors file train wrote (the stage reads so)
    kept = check_fit(parent, "cnn", child, "reset")     # before any rank starts: the tensors that load
    warm_start(child, "cnn", parent, "reset")           # every rank, before deepspeed.initialize
    groups = param_groups(child, init, lr=3e-3)         # [head at lr, backbone at lr * ratio]; freezes
    set_trainable(child, init, epoch)                   # each epoch: gradual unfreezing
    parent.identity                                     # spec, version, commit, weights sha256: lineage

Hand-written because the project's own pieces must hold across it: the parent
is read by the one loader (tasks/weights.py: safetensors only, its SHA-256 as
registered, through tasks/registry/reading.py), and refused with a message
naming the tensor and both shapes before any process starts. The head and
backbone are the model family's own (models.split).

Two parameter groups, head first (so the logged lr is the head's), the
backbone at lr * backbone_lr_ratio. The ratio holds at every step under each
schedule train uses: WarmupCosineLR scales each group's own initial lr, no
schedule leaves the groups as built, and for WarmupLR / WarmupDecayLR, which
broadcast one scalar to every group, tasks/training/engine.py writes their
bounds per group (group_lrs).

Freezing is requires_grad False, with the frozen parameters still in the
optimizer from the start: with no gradient, torch's AdamW and SGD skip them
(no update, no weight decay, no state) and DeepSpeed's stage-0 reduction
leaves them out, so they stay bit-identical to the parent's until
unfreeze_at_epoch, when set_trainable turns their gradients on and the
optimizer starts their state fresh. ZeRO stages 1-3 and the fp16 / bf16
optimizers build their partitions from the parameters trainable at start, so
they keep frozen ones frozen for the whole run: unfreezing is refused there
(check_unfreeze).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models import split
from tasks.errors import InputError
from tasks.params import WarmStart


@dataclass(frozen=True)
class Parent:
    """The parent's weights, which family and config made them, and its identity for the child's lineage."""

    where: str
    model: str
    config: dict
    state: dict = field(repr=False)
    identity: dict  # spec, version, commit (None for a file), path, sha256 of the weights


def is_file(spec: str) -> bool:
    """A safetensors path rather than a registry spec (NAME@VERSION, NAME@STAGE)."""
    return spec.endswith(".safetensors") or "@" not in spec


def read_parent(spec: str, repo: str | Path = ".") -> Parent:
    """A registered version (NAME@VERSION, NAME@STAGE) or a safetensors file; never a pickle."""
    from tasks.weights import parse_weights

    if is_file(spec):
        try:
            data = Path(spec).read_bytes()
        except OSError as e:
            raise InputError(f"train.init.from {spec}: cannot read the parent's weights ({e.strerror or e})") from None
        where, sha256, ident = spec, None, {"spec": spec, "version": None, "commit": None, "path": spec}
    else:
        from tasks.registry.reading import registered_weights

        try:
            data, where, sha256, v, _ = registered_weights(spec, repo)
        except InputError as e:
            raise InputError(f"train.init.from {spec}: {e}") from None
        ident = {"spec": spec, "version": str(v), "commit": v.commit, "path": where.split(": ", 1)[1]}
    state, meta = parse_weights(data, where, sha256)  # the recorded sha256 first, then safetensors only
    if "model" not in meta or "config" not in meta:
        raise InputError(f"{where}: safetensors metadata lacks 'model'/'config'; not written by train")
    try:
        config = json.loads(meta["config"])
    except ValueError as e:
        raise InputError(f"{where}: safetensors metadata 'config' is not JSON ({e})") from None
    return Parent(where, meta["model"], config, state,
                  ident | {"sha256": hashlib.sha256(data).hexdigest()})


def read_fetched(folder: Path, init: WarmStart) -> Parent | None:
    """The parent the parent stage fetched (tasks/parent.py) for train.init.from, read as any parent file
    is and checked against the sha256 recorded in its parent.json; None from scratch."""
    from tasks.data.inherit import FILES, fetched

    record = fetched(folder, init.from_)
    if record["from"] is None or record.get("unassigned"):  # from scratch (a stage that holds no version yet)
        return None
    path = folder / FILES["weights"]
    if not path.exists():
        raise InputError(f"{path}: the parent's weights are missing; run `dvc repro parent`")
    parent = read_parent(str(path))
    sha256 = record["weights"]["sha256"]
    if parent.identity["sha256"] != sha256:
        raise InputError(f"{path}: its sha256 is not the {sha256[:12]} recorded in {folder / 'parent.json'}; "
                         f"the file was changed, so it is not used; run `dvc repro parent`")
    version = record.get("artifact") and f"{record['artifact']}@{record.get('version')}"
    ident = {"spec": record["from"], "version": version, "commit": record.get("commit"),
             "path": record["weights"].get("path"), "sha256": sha256}
    return Parent(parent.where, parent.model, parent.config, parent.state, ident)


def check_fit(parent: Parent, family: str, child: nn.Module, head: str) -> dict:
    """The parent's tensors the child takes (all, or all but the head's with head: reset); every problem
    at once, each tensor named with both shapes."""
    if parent.model != family:
        raise InputError(f"train.init.from {parent.where}: the parent is a {parent.model}, the child a {family} "
                         f"(train.model); a warm start needs the same family")
    backbone, head_keys = split(child)
    mine = child.state_dict()
    differ = [k for k in head_keys if k in parent.state and parent.state[k].shape != mine[k].shape]
    if differ and head == "keep":
        shapes = ", ".join(f"{k} {tuple(parent.state[k].shape)} -> {tuple(mine[k].shape)}" for k in differ)
        raise InputError(f"train.init.from {parent.where}: the parent has another number of outputs ({shapes}); "
                         f"set train.init.head: reset to train a fresh output layer")
    keys = backbone + (head_keys if head == "keep" else [])
    problems = [f"{k} is not in the parent" for k in keys if k not in parent.state]
    problems += [f"{k}: the parent's {tuple(parent.state[k].shape)}, the child's {tuple(mine[k].shape)}"
                 for k in keys if k in parent.state and parent.state[k].shape != mine[k].shape]
    extra = sorted(set(parent.state) - set(mine))
    problems += [f"{k} is in the parent only" for k in extra[:5]] + ([f"... {len(extra) - 5} more"]
                                                                     if len(extra) > 5 else [])
    if problems:
        raise InputError(f"train.init.from {parent.where}: the weights do not fit train.{family} "
                         f"({len(problems)} problem(s)): " + "; ".join(problems))
    return {k: parent.state[k] for k in keys}


def warm_start(child: nn.Module, family: str, parent: Parent, head: str) -> None:
    """The parent's tensors into the child (head: reset leaves the child's fresh output layer)."""
    kept = check_fit(parent, family, child, head)
    with torch.no_grad():
        mine = child.state_dict()
        for k, v in kept.items():
            mine[k].copy_(v)


def frozen_names(child: nn.Module, init: WarmStart) -> list[str]:
    """The parameters train.init.freeze names: the backbone's, or those a glob matches (a parameter's
    name, or a module it is in: `features` and `features.0.*` both match features.0.weight)."""
    names = [n for n, _ in child.named_parameters()]
    patterns = [init.freeze] if isinstance(init.freeze, str) else list(init.freeze)
    backbone = set(split(child)[0]) if "backbone" in patterns else set()
    patterns = [p for p in patterns if p != "backbone"]  # `backbone` beside globs: the union of both

    def matches(name: str, pattern: str) -> bool:
        parts = name.split(".")
        return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))

    idle = [p for p in patterns if not any(matches(n, p) for n in names)]
    if idle:
        top = sorted({n.split(".")[0] for n in names})
        raise InputError(f"train.init.freeze: {', '.join(map(repr, idle))} match(es) no parameter of the model "
                         f"(its modules: {', '.join(top)})")
    return [n for n in names if n in backbone or any(matches(n, p) for p in patterns)]


def set_trainable(child: nn.Module, init: WarmStart, epoch: int) -> None:
    """requires_grad for `epoch`: frozen parameters stay without gradients until unfreeze_at_epoch; with
    train.init.frozen_norm eval, a BatchNorm layer all of whose parameters are frozen is put in eval mode
    (called at each epoch's start, after validation's train() put every module back in training mode)."""
    if init.from_ is None or not init.freeze:
        return
    thaw = init.unfreeze_at_epoch is not None and epoch >= init.unfreeze_at_epoch
    params = dict(child.named_parameters())
    frozen = set(frozen_names(child, init))
    for name in frozen:
        params[name].requires_grad_(thaw)
    if init.frozen_norm == "eval":
        for name, m in child.named_modules():
            own = [f"{name}.{p}" for p, _ in m.named_parameters(recurse=False)]
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and own and frozen.issuperset(own):
                m.train(thaw and child.training)  # eval while frozen: the parent's statistics, not updated


def param_groups(child: nn.Module, init: WarmStart, lr: float, epoch: int = 1) -> list[dict]:
    """The optimizer's groups, head first: [head at lr, backbone at lr * backbone_lr_ratio], every parameter
    in one (frozen ones too, see the module docstring); sets requires_grad for `epoch`."""
    frozen = set(frozen_names(child, init)) if init.freeze else set()
    backbone, head = split(child)
    if init.head == "reset" and frozen & set(head):
        raise InputError("train.init.freeze: the head is reset (train.init.head: reset), so freezing it would "
                         "keep a random output layer; leave it out of freeze")
    if frozen == {n for n, _ in child.named_parameters()} and init.unfreeze_at_epoch is None:
        raise InputError("train.init.freeze: every parameter is frozen and none unfreezes; nothing would train")
    set_trainable(child, init, epoch)
    params = dict(child.named_parameters())
    return [{"name": "head", "params": [params[k] for k in head if k in params], "lr": lr},
            {"name": "backbone", "params": [params[k] for k in backbone if k in params],
             "lr": lr * init.backbone_lr_ratio}]


def group_lrs(init: WarmStart, lr: float) -> list[float]:
    """Each group's peak lr, in param_groups' order: what WarmupLR and WarmupDecayLR are given per group."""
    return [lr, lr * init.backbone_lr_ratio]


def check_unfreeze(init: WarmStart, stage: int, precision: str) -> None:
    """Gradual unfreezing needs an optimizer that takes the frozen parameters in later (ZeRO 0, fp32)."""
    if init.unfreeze_at_epoch is not None and (stage > 0 or precision != "fp32"):
        raise InputError(f"train.init.unfreeze_at_epoch needs train.zero_stage 0 and precision fp32 (this run: "
                         f"stage {stage}, {precision}): ZeRO and the fp16/bf16 optimizers partition only the "
                         f"parameters trainable at start, so the frozen ones would never train; set it to null "
                         f"(frozen for the whole run) or train with stage 0 in fp32")
