"""The DeepSpeed engine as the train stage builds it: its config derived from the train params.

    cfg = ds_config(params, world_size, total_steps)   # saved beside the checkpoints as ds_config.json
    engine = build_engine(model, cfg)                  # deepspeed.initialize, plus local clipping

No second copy of the config to drift: every key comes from params.yaml's
`train` section, and `train.deepspeed_config` names a JSON file of DeepSpeed
keys merged over it. A warm start (train.init) passes its parameter groups
and gets its schedule's bounds per group (training/init.py).
"""

from __future__ import annotations

import torch

from tasks.data.tables import read_json
from tasks.errors import InputError
from tasks.params import Train
from tasks.training.init import group_lrs


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def ds_config(params: Train, world_size: int, total_steps: int) -> dict:
    """The DeepSpeed config, derived from the train params; train.deepspeed_config's keys override it."""
    opt = params.optimizer
    # torch's own optimizers, multi-tensor ("foreach": a few kernels a step for all parameters, not a few per
    # parameter; torch's default on GPUs, not on the CPU, where it saves 0.07 ms of the digits CNN's 2.6 ms step)
    optimizer = ({"type": "AdamW", "params": {"lr": opt.lr, "weight_decay": opt.weight_decay,
                                              "betas": list(opt.betas), "torch_adam": True, "foreach": True}}
                 if opt.name == "adamw" else
                 {"type": "SGD", "params": {"lr": opt.lr, "weight_decay": opt.weight_decay, "momentum": opt.momentum,
                                            "foreach": True}})
    sched = params.schedule
    # DeepSpeed's schedulers refuse warmup_num_steps 0 and warm up over at least 2 steps: with no warmup
    # asked for, a log warmup over them reaches the peak at its second step (one batch trains at the
    # floor), and the cosine schedule warms up from ratio 1.0, i.e. not at all
    warmup = ({"warmup_num_steps": sched.warmup_steps, "warmup_type": "linear"} if sched.warmup_steps else
              {"warmup_num_steps": 1, "warmup_type": "log"})
    # WarmupLR and WarmupDecayLR broadcast a scalar bound to every group: a warm start's two groups (head,
    # backbone; training/init.py) get theirs per group, so the backbone_lr_ratio holds at every step
    first_ratio = 0.0 if sched.warmup_steps else 1.0  # cosine's warmup start
    peak = group_lrs(params.init, opt.lr) if params.init.from_ else opt.lr
    low = [0.0] * len(peak) if params.init.from_ else 0.0
    scheduler = {
        "constant": {"type": "WarmupLR", "params": {"warmup_min_lr": low, "warmup_max_lr": peak, **warmup}},
        "linear": {"type": "WarmupDecayLR", "params": {"warmup_min_lr": low, "warmup_max_lr": peak,
                                                       "total_num_steps": total_steps, **warmup}},
        "cosine": {"type": "WarmupCosineLR", "params": {"total_num_steps": total_steps, "warmup_min_ratio": first_ratio,
                                                        "cos_min_ratio": sched.min_lr_ratio, **warmup}},
    }[sched.name]
    config = {
        "train_micro_batch_size_per_gpu": params.batch_size,
        "gradient_accumulation_steps": params.grad_accum,
        "train_batch_size": params.batch_size * params.grad_accum * world_size,
        "gradient_clipping": params.grad_clip,
        "optimizer": optimizer,
        **({} if sched.name == "constant" and not sched.warmup_steps else {"scheduler": scheduler}),
        "zero_optimization": {"stage": params.zero_stage},
        "bf16": {"enabled": params.precision == "bf16"},
        "fp16": {"enabled": params.precision == "fp16", "loss_scale": 0},  # 0: dynamic loss scaling
        "seed": params.seed,
        "steps_per_print": 10**9,  # progress is shown by tqdm, per epoch
        # DeepSpeed's throughput timer is on by default and synchronises the device at every forward and
        # every step (two host waits a step on a GPU) for a samples/s line printed every steps_per_print
        # steps, which is never here: off. A user's JSON can turn it back on.
        "timers": {"throughput": {"enabled": False}},
    }
    if opt.name == "sgd" and params.zero_stage:  # torch's SGD under ZeRO works, but DeepSpeed asks to be told
        config["zero_allow_untested_optimizer"] = True
    if params.deepspeed_config:
        override = read_json(params.deepspeed_config, "train.deepspeed_config")
        if not isinstance(override, dict):
            raise InputError(f"{params.deepspeed_config}: train.deepspeed_config must hold a JSON object of "
                             f"DeepSpeed keys, not a {type(override).__name__}")
        config = _merge(config, override)
    return config


def zero_stage(cfg: dict) -> int:
    """The ZeRO stage the engine really runs: train.zero_stage, or a user's DeepSpeed JSON over it."""
    return int(cfg.get("zero_optimization", {}).get("stage", 0))


def build_engine(model: torch.nn.Module, cfg: dict, groups: list[dict] | None = None):
    """deepspeed.initialize on the model with this config (the launcher's environment set); `groups`: the
    optimizer's parameter groups (a warm start's, training/init.py), else one group of every parameter."""
    import deepspeed

    from tasks.training import ops

    ops.build()  # a no-op once the rank's start has loaded it
    if groups and zero_stage(cfg) > 0:  # ZeRO 1/2 partition a group's trainable parameters and fail (IndexError)
        groups = [g for g in groups if any(p.requires_grad for p in g["params"])]  # on a wholly frozen group
    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups or model.parameters(), config=cfg)
    clip_locally(engine)
    return engine


def clip_locally(engine) -> None:
    """Gradient clipping without a collective, where DeepSpeed's own clip needs none.

    On its plain fp32 path (ZeRO stage 0, no fp16/bf16 optimizer wrapper) DeepSpeed clips after its gradient
    all-reduce with `runtime.utils.clip_grad_norm_`: a Python loop over the parameters and a blocking
    all-reduce of the norm, there for MoE layers, whose experts' gradients differ between ranks. With no
    MoE layers and no model parallelism, every rank already holds the same averaged gradients, so torch's
    fused clip gives the same norm locally with the same rule (scale by max_norm / (norm + 1e-6), at most 1).
    On the digits CNN over 2 CPU ranks this is about a sixth of a step (benchmarks/train_vs_ddp.py). The
    ZeRO optimizers and the fp16/bf16 wrappers clip inside their own step and are left as they are."""
    if engine.has_moe_layers or engine.mpu is not None:
        return
    max_norm = engine.gradient_clipping()
    engine.clip_fp32_gradients = lambda: torch.nn.utils.clip_grad_norm_(engine.module.parameters(), max_norm,
                                                                        foreach=True)
