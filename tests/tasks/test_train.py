"""train: the DeepSpeed config and launcher derived from params; checks before launch.

The distributed loop itself runs in tests/e2e (2 CPU ranks over gloo).
"""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks import checkpoints as ckpt
from tasks import reshard
from tasks.engine import ds_config, zero_stage
from tasks.errors import InputError
from tasks.launch import launcher_command, precheck, refuse_other_world, threads_per_rank
from tasks.params import Train
from tasks.reshard import rest_of_epoch
from tasks.tables import TOKENS_KEY
from tasks.train import epoch_batches, epoch_order, input_dtype
from tests.conftest import ROOT


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


def test_epoch_order_depends_on_seed_and_epoch_only():
    a = epoch_order(100, seed=1, epoch=3, rank=0, world=2, batch=8)
    assert a.shape == (6, 8)  # 50 rows a rank, 6 whole batches
    assert torch.equal(a, epoch_order(100, 1, 3, 0, 2, 8))
    assert not torch.equal(a, epoch_order(100, 1, 4, 0, 2, 8))
    both = torch.cat([a.flatten(), epoch_order(100, 1, 3, 1, 2, 8).flatten()])
    assert len(set(both.tolist())) == len(both)  # ranks never share a row


def test_a_resharded_epoch_deals_out_exactly_the_rows_the_old_processes_had_not_reached():
    old = torch.stack([epoch_order(100, seed=1, epoch=2, rank=r, world=2, batch=4) for r in range(2)])  # (2, 12, 4)
    seen, left = set(old[:, :3].flatten().tolist()), set(old[:, 3:].flatten().tolist())
    for world in (1, 3, 4):
        new = [rest_of_epoch(old, 3, r, world) for r in range(world)]
        rows = torch.cat([b.flatten() for b in new]).tolist()
        assert {b.shape for b in new} == {(len(left) // world // 4, 4)}  # whole batches, as many on every rank
        assert len(set(rows)) == len(rows) and set(rows) <= left and not set(rows) & seen
        assert len(left) - len(rows) < world * 4  # at most a last part-batch a rank left out, as epoch_order does


def test_handovers_chain_so_every_row_of_the_epoch_is_trained_once():
    p = Train(batch_size=4, seed=1)
    # 2 processes did 3 batches of epoch 2, then 1 process took over and did 4 of what it was dealt
    state = reshard.hand_over({"epoch": 2, "batch": 3, "resharded": None}, old_world=2)
    assert state == {"epoch": 2, "batch": 0, "resharded": {"epoch": 2, "handovers": [[2, 3]]}}
    state = reshard.hand_over(state | {"batch": 4}, old_world=1)
    assert state["resharded"]["handovers"] == [[2, 3], [1, 4]] and state["batch"] == 0
    first = [epoch_order(100, 1, 2, r, 2, 4) for r in range(2)]
    second = epoch_batches(100, p, 2, 0, 1, {"epoch": 2, "handovers": [[2, 3]]})
    third = [epoch_batches(100, p, 2, r, 3, state["resharded"]) for r in range(3)]
    trained = [b[:3] for b in first] + [second[:4]] + third
    rows = torch.cat([b.flatten() for b in trained]).tolist()
    assert len(rows) == len(set(rows))  # no row twice
    epoch = set(torch.cat([b.flatten() for b in first]).tolist())
    assert set(rows) <= epoch and len(epoch - set(rows)) < 3 * 4  # only a part-batch a rank left out at the end
    assert epoch_batches(100, p, 3, 0, 3, state["resharded"]).equal(epoch_order(100, 1, 3, 0, 3, 4))  # later epochs


def test_zero_stage_is_the_one_the_engine_runs(tmp_path):
    (tmp_path / "z.json").write_text('{"zero_optimization": {"stage": 2}}')
    assert zero_stage(ds_config(Train(), 2, 10)) == 0
    assert zero_stage(ds_config(Train(deepspeed_config=tmp_path / "z.json"), 2, 10)) == 2


def test_another_process_count_is_refused_or_continued_as_params_say(tmp_path):
    def unfinished(world: int, step: int) -> None:
        (tmp_path / f"fp-w{world}" / ckpt.step_tag(step)).mkdir(parents=True)
        ckpt.mark_complete(tmp_path / f"fp-w{world}" / ckpt.step_tag(step),
                           {"world_size": world, "resumes_at": {"epoch": 2, "batch": 5}})

    unfinished(2, 30)
    with pytest.raises(InputError, match=r"fp-w2/step00000030: an unfinished run .* written by 2 processes; this "
                                         r"run has 1.*train.checkpoint.reshard: true to continue it"):
        refuse_other_world(Train(), 0, tmp_path, "fp", world=1)
    refuse_other_world(Train.model_validate({"checkpoint": {"reshard": True}}), 0, tmp_path, "fp", world=1)
    refuse_other_world(Train.model_validate({"checkpoint": {"reshard": True}, "zero_stage": 2}), 2, tmp_path, "fp", 1)
    with pytest.raises(InputError, match=r"under ZeRO stages 0-2; stage 3 also cuts the weights"):
        refuse_other_world(Train.model_validate({"checkpoint": {"reshard": True}}), 3, tmp_path, "fp", 1)  # a JSON's
    unfinished(1, 40)  # this count's own run went on from there: it is resumed, nothing to refuse
    refuse_other_world(Train(), 0, tmp_path, "fp", world=1)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_token_ids_reach_the_model_exact_in_half_precision(precision):
    values = pa.schema([("x0", pa.float32())])
    tokens = values.with_metadata({TOKENS_KEY: b"50257"})
    assert input_dtype(precision, values) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    ids = torch.tensor([[50256.0, 1999.0, 257.0, 3.0, 0.0]])  # bf16 would give 50176, 2000, 256
    assert ids.to(input_dtype(precision, tokens)).long().tolist() == [[50256, 1999, 257, 3, 0]]
    assert input_dtype("fp32", tokens) == input_dtype("fp32", values) == torch.float32


@pytest.mark.parametrize("gpu", [False, True])
def test_launcher_uses_every_gpu_else_cpu_ranks(monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    cmd = launcher_command(Train(num_procs=3, master_port=29999))
    assert cmd[1:4] == ["-u", "-m", "deepspeed.launcher.runner"]
    assert "--master_port=29999" in cmd
    # with GPUs the launcher's default is every visible one; without, num_procs CPU ranks
    assert ("--num_gpus=3" in cmd) is not gpu
    assert cmd[-2:] == ["--module", "tasks.train"]


def test_several_nodes_through_a_hostfile_with_or_without_ssh(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = Train(hostfile="hostfile", master_addr="10.0.0.1", master_port=29999)
    over_ssh = launcher_command(p, env={})
    assert "--hostfile=hostfile" in over_ssh and "--master_addr=10.0.0.1" in over_ssh
    assert "--no_ssh" not in over_ssh and not any(a.startswith("--num_gpus") for a in over_ssh)
    per_node = launcher_command(p, env={"NODE_RANK": "1"})
    assert {"--no_ssh", "--node_rank=1"} <= set(per_node)


def test_cpu_ranks_share_the_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_rank(Train(num_procs=2)) == {"OMP_NUM_THREADS": "4"}
    assert threads_per_rank(Train(num_procs=16)) == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    assert threads_per_rank(Train(num_procs=2)) == {}


def test_precheck_refuses_a_batch_larger_than_a_ranks_share(staged, tmp_path):
    from tasks.augment import augment
    from tasks.params import Augment, load_params

    augment(Augment(copies=0), staged["clean"], staged["transform"], tmp_path)  # 37 training rows
    p = load_params(ROOT / "params.yaml")
    p = p.model_copy(update={"paths": p.paths.model_copy(update={"splits": tmp_path,
                                                                 "transform": staged["transform"]}),
                             "train": p.train.model_copy(update={"num_procs": 2, "batch_size": 32})})
    rows = pq.read_metadata(tmp_path / "train.parquet").num_rows
    with pytest.raises(InputError, match=rf"train\.batch_size 32 is larger than the {rows // 2} training rows "
                                         rf"each of the 2"):
        precheck(p)


def test_precheck_refuses_missing_splits(staged, tmp_path):
    from tasks.params import load_params

    p = load_params(ROOT / "params.yaml")
    p = p.model_copy(update={"paths": p.paths.model_copy(update={"splits": tmp_path,
                                                                 "transform": staged["transform"]})})
    with pytest.raises(InputError, match=r"train\.parquet: file not found"):
        precheck(p)


def test_precheck_refuses_non_finite_features(staged, tmp_path):
    from tasks.augment import augment
    from tasks.params import Augment, load_params

    augment(Augment(copies=0), staged["clean"], staged["transform"], tmp_path)
    table = pq.read_table(tmp_path / "train.parquet")
    bad = table.set_column(0, table.schema.field(0), pa.array([float("nan")] * table.num_rows, pa.float32()))
    pq.write_table(bad, tmp_path / "train.parquet")
    p = load_params(ROOT / "params.yaml")
    p = p.model_copy(update={"paths": p.paths.model_copy(update={"splits": tmp_path,
                                                                 "transform": staged["transform"]})})
    with pytest.raises(InputError, match=r"train\.parquet: fails the pipeline's checks: column 'a': \d+ non-finite"):
        precheck(p)


def test_precheck_refuses_bf16_batch_norm_on_cpu_ranks(staged, tmp_path, monkeypatch):
    from tasks.augment import augment
    from tasks.params import Augment, load_params

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    augment(Augment(copies=0), staged["clean"], staged["transform"], tmp_path)
    p = load_params(ROOT / "params.yaml")
    train = p.train.model_copy(update={"precision": "bf16", "batch_size": 4, "model": "mlp"})
    p = p.model_copy(update={"paths": p.paths.model_copy(update={"splits": tmp_path,
                                                                 "transform": staged["transform"]}),
                             "train": train})
    with pytest.raises(InputError, match=r"bf16 on CPU ranks fails in BatchNorm .* set train\.mlp\.norm: layer"):
        precheck(p)
    layer = train.model_copy(update={"mlp": train.mlp.model_copy(update={"norm": "layer"})})
    precheck(p.model_copy(update={"train": layer}))  # fine


def test_precheck_names_bad_launch_and_model_settings(staged, tmp_path):
    from tasks.augment import augment
    from tasks.params import Augment, load_params

    augment(Augment(copies=0), staged["clean"], staged["transform"], tmp_path)
    p = load_params(ROOT / "params.yaml")
    paths = p.paths.model_copy(update={"splits": tmp_path, "transform": staged["transform"],
                                       "checkpoints": tmp_path / "ckpt"})

    def check(**train):
        precheck(p.model_copy(update={"paths": paths, "train": p.train.model_copy(update={"batch_size": 4, **train})}))

    with pytest.raises(InputError, match=r"hostfile: train\.hostfile not found"):
        check(hostfile=tmp_path / "hostfile")
    (tmp_path / "hostfile").write_text("node-a\n")
    with pytest.raises(InputError, match=r"needs one 'host slots=N' line per machine"):
        check(hostfile=tmp_path / "hostfile")
    rnn = p.train.rnn.model_copy(update={"seq_len": 3})  # 4 features (2x2 images) do not split in 3 steps
    with pytest.raises(InputError, match=r"train\.rnn: 4 features do not split into 3 equal steps"):
        check(model="rnn", rnn=rnn)
    (tmp_path / "ds.json").write_text("[1, 2]")
    with pytest.raises(InputError, match=r"ds\.json: train\.deepspeed_config must hold a JSON object"):
        check(model="mlp", deepspeed_config=tmp_path / "ds.json")
