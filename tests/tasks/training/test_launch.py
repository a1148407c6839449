"""training.launch: the launcher derived from params, and the checks before any rank starts.

The distributed loop itself runs in tests/e2e (2 CPU ranks over gloo).
"""

import base64
import json
import os
import signal
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tasks.errors import InputError
from tasks.params import Train
from tasks.training import checkpoints as ckpt
from tasks.training.launch import (
    accelerator_env,
    launch,
    launcher_command,
    precheck,
    refuse_other_world,
    threads_per_rank,
)
from tests.conftest import ROOT


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


@pytest.mark.parametrize("gpu", [False, True])
def test_launcher_uses_every_gpu_else_cpu_ranks(monkeypatch, gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cmd = launcher_command(Train(num_procs=3, master_port=29999))
    assert cmd[1:4] == ["-u", "-m", "deepspeed.launcher.launch"]  # DeepSpeed's per-node launcher, no runner
    assert "--master_port=29999" in cmd and "--master_addr=127.0.0.1" in cmd
    # with GPUs every visible one; without, num_procs CPU ranks
    assert world_info(cmd) == {"localhost": [0, 1, 2, 3] if gpu else [0, 1, 2]}
    assert cmd[-2:] == ["--module", "tasks.train"]
    if gpu:  # CUDA_VISIBLE_DEVICES is respected, as DeepSpeed's runner does
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
        assert world_info(launcher_command(Train())) == {"localhost": [2, 3]}
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2c")
        with pytest.raises(InputError, match="CUDA_VISIBLE_DEVICES='GPU-8f2c': DeepSpeed's launcher needs device"):
            launcher_command(Train())


def world_info(cmd: list[str]) -> dict:
    (arg,) = [a for a in cmd if a.startswith("--world_info=")]
    return json.loads(base64.urlsafe_b64decode(arg.removeprefix("--world_info=")))


def test_several_nodes_through_a_hostfile_with_or_without_ssh(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = Train(hostfile="hostfile", master_addr="10.0.0.1", master_port=29999)
    over_ssh = launcher_command(p, env={})  # node 0 starts every node through DeepSpeed's runner
    assert over_ssh[3] == "deepspeed.launcher.runner"
    assert "--hostfile=hostfile" in over_ssh and "--master_addr=10.0.0.1" in over_ssh
    assert not any(a.startswith("--num_gpus") for a in over_ssh)
    Path("hostfile").write_text("node-a slots=2  # first\nnode-b slots=3\n")
    per_node = launcher_command(p, env={"NODE_RANK": "1"})  # each node its own per-node launcher
    assert per_node[3] == "deepspeed.launcher.launch" and {"--node_rank=1", "--master_addr=10.0.0.1"} <= set(per_node)
    assert world_info(per_node) == {"node-a": [0, 1], "node-b": [0, 1, 2]}


def test_deepspeeds_start_up_lines_are_off_unless_train_verbose(monkeypatch, tmp_path):
    """Its launcher's INFO log (world info, CUDA_VISIBLE_DEVICES, the spawned processes) and, without a GPU,
    the accelerator detection that warns in the launcher and in every rank. What a real run prints either
    way is in tests/e2e/test_training_output.py."""
    monkeypatch.chdir(tmp_path)
    Path("hostfile").write_text("node-a slots=2\n")
    quiet, verbose = Train(hostfile="hostfile"), Train(hostfile="hostfile", verbose=True)
    for env in ({}, {"NODE_RANK": "0"}):  # DeepSpeed's runner (ssh to every node), its per-node launcher
        assert "--log_level=warning" in launcher_command(quiet, env)
        assert "--log_level=info" in launcher_command(verbose, env)
    assert launcher_command(Train())[-3:] == ["--no_local_rank", "--module", "tasks.train"]  # the script's own
    gpu = torch.cuda.is_available()  # a GPU is detected without a word; CPU ranks are named, not detected
    assert accelerator_env(Train(), env={}) == ({} if gpu else {"DS_ACCELERATOR": "cpu"})
    assert accelerator_env(Train(verbose=True), env={}) == {}  # DeepSpeed detects, and says so
    assert accelerator_env(Train(), env={"DS_ACCELERATOR": "cuda"}) == {}  # the user's choice stands


def test_cpu_ranks_share_the_cores(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert threads_per_rank(Train(num_procs=2)) == {"OMP_NUM_THREADS": "4"}
    assert threads_per_rank(Train(num_procs=16)) == {"OMP_NUM_THREADS": "1"}
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice stands
    assert threads_per_rank(Train(num_procs=2)) == {}


def test_the_ranks_find_this_interpreters_tools_first(tmp_path, monkeypatch):
    # torch picks the first ninja on PATH to check DeepSpeed's compiled op: a system one rebuilt it every time
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    out, handler = tmp_path / "path.txt", signal.getsignal(signal.SIGINT)
    code = launch([sys.executable, "-c", f"import os; open({str(out)!r}, 'w').write(os.environ['PATH'])"], {})
    assert code == 0 and out.read_text().split(os.pathsep)[:2] == [str(Path(sys.executable).parent), "/usr/bin"]
    assert signal.getsignal(signal.SIGINT) is handler  # this process's own handler is back


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
