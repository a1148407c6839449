"""training.engine: the DeepSpeed config derived from the train params, and the ZeRO stage it runs.
"""



import pytest
import torch

from tasks.errors import InputError
from tasks.params import Train
from tasks.training.engine import ds_config, zero_stage


def test_deepspeed_config_follows_params():
    cfg = ds_config(Train(batch_size=16, grad_accum=4, zero_stage=2, precision="bf16", grad_clip=0.5),
                    world_size=3, total_steps=100)
    assert cfg["train_batch_size"] == 16 * 4 * 3
    assert cfg["train_micro_batch_size_per_gpu"] == 16
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["zero_optimization"] == {"stage": 2}
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["optimizer"]["type"] == "AdamW"
    assert cfg["optimizer"]["params"]["torch_adam"] is True  # no FusedAdam build on the CPU
    assert cfg["optimizer"]["params"]["foreach"] is True  # one multi-tensor update, also on the CPU
    assert "scheduler" not in cfg  # constant, no warmup
    from deepspeed.utils.config import get_timers_config

    assert not get_timers_config(cfg).enabled  # no device synchronisation at every forward and step
    warm = ds_config(Train.model_validate({"schedule": {"warmup_steps": 20}}), world_size=1, total_steps=100)
    assert warm["scheduler"] == {"type": "WarmupLR", "params": {"warmup_min_lr": 0.0, "warmup_max_lr": 3e-3,
                                                                 "warmup_num_steps": 20, "warmup_type": "linear"}}


def test_optimizer_schedule_and_a_users_deepspeed_json(tmp_path):
    sgd = Train.model_validate({"optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.8},
                                "schedule": {"name": "cosine", "warmup_steps": 10, "min_lr_ratio": 0.1},
                                "zero_stage": 1})
    cfg = ds_config(sgd, world_size=2, total_steps=500)
    assert cfg["optimizer"] == {"type": "SGD", "params": {"lr": 0.1, "weight_decay": 1e-4, "momentum": 0.8,
                                                          "foreach": True}}
    assert cfg["zero_allow_untested_optimizer"] is True
    assert cfg["scheduler"] == {"type": "WarmupCosineLR", "params": {
        "total_num_steps": 500, "warmup_min_ratio": 0.0, "cos_min_ratio": 0.1, "warmup_num_steps": 10,
        "warmup_type": "linear"}}
    linear = ds_config(Train.model_validate({"schedule": {"name": "linear", "warmup_steps": 5}}), 1, 50)
    assert linear["scheduler"]["type"] == "WarmupDecayLR" and linear["scheduler"]["params"]["total_num_steps"] == 50
    # a DeepSpeed JSON of the user's: its keys win, nested sections merge
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 3, "overlap_comm": true}, "fp16": '
                                      '{"initial_scale_power": 12}}')
    cfg = ds_config(Train(deepspeed_config=tmp_path / "ds.json", zero_stage=1), world_size=2, total_steps=10)
    assert cfg["zero_optimization"] == {"stage": 3, "overlap_comm": True}
    assert cfg["fp16"] == {"enabled": False, "loss_scale": 0, "initial_scale_power": 12}
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(InputError, match=r"bad\.json: train\.deepspeed_config is not valid JSON"):
        ds_config(Train(deepspeed_config=tmp_path / "bad.json"), world_size=2, total_steps=10)


def test_zero_stage_is_the_one_the_engine_runs(tmp_path):
    (tmp_path / "z.json").write_text('{"zero_optimization": {"stage": 2}}')
    assert zero_stage(ds_config(Train(), 2, 10)) == 0
    assert zero_stage(ds_config(Train(deepspeed_config=tmp_path / "z.json"), 2, 10)) == 2


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_a_schedule_without_warmup_builds_and_runs_at_its_peak_from_the_first_step(name):
    # DeepSpeed's WarmupDecayLR and WarmupCosineLR raise on warmup_num_steps 0, the params' default
    from deepspeed.runtime import lr_schedules

    cfg = ds_config(Train.model_validate({"schedule": {"name": name}}), world_size=1, total_steps=100)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=3e-3)
    sched = getattr(lr_schedules, cfg["scheduler"]["type"])(opt, **cfg["scheduler"]["params"])
    sched.step()  # iteration 0: the linear one's floor (one batch), the cosine one's peak already
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(3e-3, rel=0.03)
