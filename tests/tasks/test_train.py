"""train: the DeepSpeed config and launcher derived from params; checks before launch.

The distributed loop itself runs in tests/e2e (2 CPU ranks over gloo).
"""

import pytest

from tasks.errors import InputError
from tasks.params import Train
from tasks.train import ds_config, launcher_command, precheck
from tests.conftest import ROOT


def test_deepspeed_config_follows_params():
    cfg = ds_config(Train(batch_size=16, grad_accum=4, zero_stage=2, precision="bf16", grad_clip=0.5), world_size=3)
    assert cfg["train_batch_size"] == 16 * 4 * 3
    assert cfg["train_micro_batch_size_per_gpu"] == 16
    assert cfg["gradient_accumulation_steps"] == 4
    assert cfg["zero_optimization"] == {"stage": 2}
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"]
    assert cfg["gradient_clipping"] == 0.5
    assert cfg["optimizer"]["params"]["torch_adam"] is True  # no FusedAdam build on the CPU


def test_launcher_starts_cpu_ranks_without_a_gpu():
    cmd = launcher_command(Train(num_procs=3, master_port=29999))
    assert cmd[1:4] == ["-u", "-m", "deepspeed.launcher.runner"]
    assert "--num_gpus=3" in cmd and "--master_port=29999" in cmd
    assert cmd[-2:] == ["--module", "tasks.train"]


def test_precheck_refuses_missing_splits(tmp_path):
    from tasks.params import load_params

    p = load_params(ROOT / "params.yaml")
    p = p.model_copy(update={"paths": p.paths.model_copy(update={"splits": tmp_path})})
    with pytest.raises(InputError, match=r"train\.parquet: file not found"):
        precheck(p)
