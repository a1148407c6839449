"""continual.strategies: replay draws that depend on (seed, epoch, batch) alone, EWC's Fisher and penalty against
independent computations, LwF's distillation, refusals by name; each term through ZeRO 0-2 DeepSpeed engines.

    python -m pytest tests/tasks/training/test_strategies.py      # the engines: a DeepSpeed start, 15 s to 2 min
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F

from models import build
from tasks.continual import strategies as cl
from tasks.data.tables import LABEL, SPLIT, model_schema, table_writer
from tasks.errors import InputError
from tasks.files import replay_paths
from tasks.params import Continual, Train
from tasks.training import init as warm
from tasks.training.run import save_model_file
from tests.conftest import ROOT

MLP = {"n_features": 4, "n_outputs": 3, "hidden": [8], "norm": "batch", "dropout": 0.5}
FEATURES = ["a", "b", "c", "d"]


def write_buffer(splits: Path, x: torch.Tensor, y: torch.Tensor, experience: list[int], current: int,
                 features: list[str] = FEATURES) -> None:
    """replay.parquet and replay.json as augment writes them: the model table's schema, split "replay"."""
    schema = model_schema(features, None)
    columns = {f: pa.array(x[:, i].tolist(), pa.float32()) for i, f in enumerate(features)}
    table = pa.table(columns | {LABEL: pa.array(y.tolist(), pa.int64()), SPLIT: ["replay"] * len(y)}, schema=schema)
    rows, index = replay_paths(splits)
    with table_writer(rows, schema) as w:
        w.write_table(table)
    index.write_text(json.dumps({"current_experience": current, "experience": experience}))


@pytest.fixture
def splits(tmp_path) -> Path:
    torch.manual_seed(0)
    d = tmp_path / "splits"
    d.mkdir()
    write_buffer(d, torch.randn(10, 4), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0]), [0] * 3 + [1] * 4 + [2] * 3,
                 current=2)
    return d


def continual(strategy: str, **kw) -> Continual:
    return Continual.model_validate({"strategy": strategy} | kw)


WARM = Train.model_validate({"model": "mlp", "init": {"from": "parent.safetensors"}})


# replay


def test_the_replay_draw_is_a_function_of_seed_epoch_and_batch_alone():
    a = cl.replay_rows(50, 16, seed=0, epoch=2, batch=96)
    torch.manual_seed(123)  # the global generator plays no part
    torch.rand(7)
    assert torch.equal(a, cl.replay_rows(50, 16, 0, 2, 96))
    assert len(set(a.tolist())) == 16 and 0 <= a.min() and a.max() < 50  # without replacement
    others = [cl.replay_rows(50, 16, 1, 2, 96), cl.replay_rows(50, 16, 0, 3, 96), cl.replay_rows(50, 16, 0, 2, 97)]
    assert not any(torch.equal(a, o) for o in others)
    small = cl.replay_rows(3, 16, 0, 1, 0)  # a buffer smaller than the draw: with replacement
    assert len(small) == 16 and set(small.tolist()) <= {0, 1, 2}
    # the batches of an epoch drawn in another order (a resume, a reshard) get the same rows
    forward = [cl.replay_rows(50, 4, 0, 1, b) for b in range(0, 320, 32)]
    backward = [cl.replay_rows(50, 4, 0, 1, b) for b in reversed(range(0, 320, 32))][::-1]
    assert all(torch.equal(f, b) for f, b in zip(forward, backward))


def test_replay_appends_the_drawn_buffer_rows_to_the_batch(splits):
    s = cl.prepare(continual("replay", buffer={"rows_per_batch": 4}), WARM, splits, build("mlp", MLP), None, 0,
                   model_schema(FEATURES, None))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    xb, yb = s.batch(x, y, seed=0, epoch=1, first_row=40)
    drawn = cl.replay_rows(10, 4, 0, 1, 40)
    assert torch.equal(xb, torch.cat([x, s.buffer.x[drawn]])) and torch.equal(yb, torch.cat([y, s.buffer.y[drawn]]))
    out = torch.randn(12, 3)
    loss, term = s.loss(out, xb, yb, None, WARM)
    assert loss == pytest.approx(F.cross_entropy(out, yb).item())  # one loss over new and replayed rows
    assert term == pytest.approx(F.cross_entropy(out[8:], yb[8:]).item())  # the replayed rows' part, as logged
    assert s.term == "replay_loss"


# EWC


def test_the_fisher_is_the_mean_squared_per_row_gradient_computed_independently():
    torch.manual_seed(0)
    model = build("mlp", MLP)
    model.train()(torch.randn(32, 4))  # BatchNorm statistics away from their defaults
    model.net[1].eval()  # a frozen BatchNorm in eval (train.init.frozen_norm): left as it is
    model.net[0].weight.requires_grad_(False)  # a frozen parameter: its Fisher too, for a later unfreezing
    x, y = torch.randn(12, 4), torch.randint(0, 3, (12,))
    fisher = cl.diagonal_fisher(model, x, y, lambda out, t: F.cross_entropy(out, t))
    assert model.training and not model.net[1].training and not model.net[0].weight.requires_grad

    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    model.eval()  # dropout off, BatchNorm on its running statistics: what the loop computes in

    def row_loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, (p, buffers), (xi[None],)), yi[None])

    per_row = vmap(grad(row_loss), in_dims=(None, 0, 0))(params, x, y)
    for n in params:
        assert torch.allclose(fisher[n], per_row[n].pow(2).mean(0), rtol=1e-4, atol=1e-7), n


@pytest.mark.parametrize("family", ["mlp", "cnn", "rnn", "transformer"])
def test_the_fisher_loop_works_for_every_family_and_leaves_the_module_as_it_was(family):
    from tests.tasks.training.test_init import CONFIGS, X

    torch.manual_seed(0)
    model = build(family, CONFIGS[family])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fisher = cl.diagonal_fisher(model, X[:6], torch.randint(0, 10, (6,)), lambda out, t: F.cross_entropy(out, t))
    assert fisher.keys() == dict(model.named_parameters()).keys()
    assert all(torch.isfinite(f).all() and (f >= 0).all() for f in fisher.values())
    assert sum(f.sum() for f in fisher.values()) > 0
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BatchNorm's statistics too
    assert model.training and all(p.grad is None for p in model.parameters())


def test_the_fisher_of_a_linear_softmax_model_is_the_hand_derived_one():
    torch.manual_seed(1)
    lin = torch.nn.Linear(4, 3)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    fisher = cl.diagonal_fisher(lin, x, y, lambda out, t: F.cross_entropy(out, t))
    err = torch.softmax(lin(x), 1).detach() - F.one_hot(y, 3)  # dCE/dlogits, per row
    assert torch.allclose(fisher["weight"], (err[:, :, None] * x[:, None, :]).pow(2).mean(0), atol=1e-6)
    assert torch.allclose(fisher["bias"], err.pow(2).mean(0), atol=1e-6)


def test_the_ewc_penalty_is_zero_at_the_parent_and_its_gradient_is_weight_f_times_the_distance():
    torch.manual_seed(0)
    model = build("mlp", MLP)
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    fisher = {n: torch.rand_like(p) for n, p in model.named_parameters()}
    assert cl.ewc_penalty(model, fisher, anchor).item() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    weight = 250.0
    (weight / 2 * cl.ewc_penalty(model, fisher, anchor)).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, weight * fisher[n] * (p.detach() - anchor[n]), rtol=1e-5, atol=1e-7), n
    half = model.to(torch.bfloat16)  # bf16 weights: the penalty in fp32
    assert cl.ewc_penalty(half, fisher, anchor).dtype == torch.float32


def test_ewc_takes_the_fisher_over_the_earlier_rows_only_and_anchors_at_the_warm_start(splits):
    torch.manual_seed(0)
    model = build("mlp", MLP)
    warm_started = object()  # ewc reads no parent file: only that the run started from one
    s = cl.prepare(continual("ewc", ewc={"weight": 10.0}), WARM, splits, model, warm_started, 2,
                   model_schema(FEATURES, None))
    old = s.buffer.experience < 2
    assert old.sum() == 7
    expected = cl.diagonal_fisher(model, s.buffer.x[old], s.buffer.y[old], lambda out, t: F.cross_entropy(out, t))
    assert all(torch.equal(s.fisher[n], expected[n]) for n in expected)
    assert all(torch.equal(s.anchor[n], p.detach()) for n, p in model.named_parameters())
    out, y = model(torch.randn(5, 4)), torch.randint(0, 3, (5,))
    loss, term = s.loss(out, None, y, model, WARM)
    assert term.item() == 0.0 and loss.item() == pytest.approx(F.cross_entropy(out, y).item())
    rank1 = cl.prepare(continual("ewc"), WARM, splits, model, warm_started, 2, model_schema(FEATURES, None),
                       rank=1)
    assert rank1.fisher and all(not f.any() for f in rank1.fisher.values())  # rank 0's comes by broadcast


# LwF


def test_distillation_is_zero_for_the_teacher_itself_positive_otherwise_and_kl_over_the_seen_classes():
    torch.manual_seed(0)
    teacher, student = torch.randn(6, 5), torch.randn(6, 5)
    seen = torch.tensor([0, 2, 3])
    assert cl.distillation(teacher, teacher, seen, 2.0).item() == pytest.approx(0.0, abs=1e-7)
    value = cl.distillation(student, teacher, seen, 2.0)
    p_t, p_s = torch.softmax(teacher[:, seen] / 2, 1), torch.softmax(student[:, seen] / 2, 1)
    assert value.item() > 0
    assert value.item() == pytest.approx(4 * (p_t * (p_t / p_s).log()).sum(1).mean().item(), rel=1e-5)
    other = student.clone()
    other[:, [1, 4]] += 5.0  # classes the parent has not seen play no part
    assert cl.distillation(other, teacher, seen, 2.0).item() == pytest.approx(value.item(), rel=1e-6)


def parent_file(tmp_path: Path, config: dict, seed: int = 3) -> warm.Parent:
    torch.manual_seed(seed)
    module = build("mlp", config)
    path = tmp_path / "parent.safetensors"
    save_model_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, path,
                    {"model": "mlp", "config": json.dumps(config, sort_keys=True)})
    return warm.read_parent(str(path))


def test_lwf_distils_the_parent_over_the_classes_its_earlier_rows_hold(splits, tmp_path):
    parent = parent_file(tmp_path, MLP)
    write_buffer(splits, torch.randn(4, 4), torch.tensor([0, 2, 1, 1]), [0, 1, 2, 2], current=2)  # 1 is new
    child = build("mlp", MLP)
    warm.warm_start(child, "mlp", parent, "keep")
    s = cl.prepare(continual("lwf", lwf={"weight": 0.5, "temperature": 3.0}), WARM, splits, child, parent, 0,
                   model_schema(FEATURES, None))
    assert s.classes.tolist() == [0, 2] and not s.teacher.training and s.term == "distill_loss"
    assert not any(p.requires_grad for p in s.teacher.parameters())
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    out = child.eval()(x)
    loss, term = s.loss(out, x, y, child, WARM)
    assert term.item() == pytest.approx(0.0, abs=1e-7)  # the child is still the parent
    loss, term = s.loss(out + torch.randn_like(out), x, y, child, WARM)
    assert term.item() > 0
    write_buffer(splits, torch.randn(2, 4), torch.tensor([1, 1]), [2, 2], current=2)  # no earlier row: every class
    s = cl.prepare(continual("lwf"), WARM, splits, child, parent, 0, model_schema(FEATURES, None))
    assert s.classes.tolist() == [0, 1, 2]


# refusals and the fingerprint


def test_each_refusal_names_its_keys_and_the_file_and_all_come_at_once(splits, tmp_path):
    scratch = Train.model_validate({"model": "mlp"})
    with pytest.raises(InputError) as err:
        cl.check(continual("ewc"), scratch, splits, stage=3)
    assert "continual.strategy ewc needs a parent" in str(err.value) and "train.init.from is null" in str(err.value)
    assert "train.zero_stage 3 partitions them" in str(err.value)
    with pytest.raises(InputError, match="continual.strategy lwf needs a parent"):
        cl.check(continual("lwf"), scratch, splits, stage=0)
    for stage in (0, 1, 2):
        cl.check(continual("ewc"), WARM, splits, stage)
        cl.check(continual("lwf"), WARM, splits, stage)
    write_buffer(splits, torch.randn(2, 4), torch.tensor([1, 1]), [2, 2], current=2)
    with pytest.raises(InputError, match=r"continual.strategy ewc: .*replay.json lists no row of an earlier data "
                                         r"version \(experience < current_experience 2\)"):
        cl.check(continual("ewc"), WARM, splits, 0)
    write_buffer(splits, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), [], current=2)
    with pytest.raises(InputError, match=r"continual.strategy replay: .*replay.parquet holds no row to replay"):
        cl.check(continual("replay"), scratch, splits, 0)
    assert cl.check(continual("naive"), scratch, tmp_path / "nowhere", 3) is None  # naive, joint: no buffer read
    with pytest.raises(InputError, match=r"continual.strategy replay: .*nowhere/replay.parquet: file not found"):
        cl.check(continual("replay"), scratch, tmp_path / "nowhere", 0)
    regression = Train.model_validate({"model": "mlp", "loss": "mse", "init": {"from": "p.safetensors"}})
    write_buffer(splits, torch.randn(2, 4), torch.tensor([1, 1]), [0, 2], current=2)
    with pytest.raises(InputError, match="continual.strategy lwf distils class probabilities; train.loss mse"):
        cl.check(continual("lwf"), regression, splits, 0)


def test_the_buffer_is_checked_against_its_index_and_the_training_split(splits):
    (splits / "replay.json").write_text(json.dumps({"current_experience": 2, "experience": [0, 1]}))
    with pytest.raises(InputError, match=r"replay.json: 2 experience values for the 10 rows of .*replay.parquet"):
        cl.read_buffer(splits)
    (splits / "replay.json").write_text(json.dumps({"experience": [0] * 10}))
    with pytest.raises(InputError, match=r"replay.json: expected \{\"current_experience\": k"):
        cl.read_buffer(splits)
    write_buffer(splits, torch.randn(3, 3), torch.tensor([0, 1, 2]), [0, 0, 1], 1, features=["a", "b", "c"])
    with pytest.raises(InputError, match=r"replay.parquet: the replay rows' features are not the training split's"):
        cl.read_buffer(splits, model_schema(FEATURES, None))


def test_the_fingerprint_covers_the_strategy_its_own_params_and_the_buffer_it_reads(splits):
    def key(c):
        return cl.fingerprint_parts(c, splits)

    assert key(continual("naive")) != key(continual("joint"))
    assert key(continual("naive", buffer={"rows_per_batch": 4})) == key(continual("naive"))  # not read by naive
    assert key(continual("replay", buffer={"rows_per_batch": 4})) != key(continual("replay"))
    assert key(continual("ewc", ewc={"weight": 1.0})) != key(continual("ewc"))
    assert key(continual("lwf", lwf={"temperature": 1.0})) != key(continual("lwf"))
    before = key(continual("replay"))
    write_buffer(splits, torch.randn(10, 4), torch.zeros(10, dtype=torch.int64), [0] * 10, current=2)
    assert key(continual("replay")) != before
    (splits / "replay.json").unlink()
    with pytest.raises(InputError, match="replay.json: not found; continual.strategy ewc reads the replay buffer"):
        key(continual("ewc"))


# through DeepSpeed engines

ENGINES = """
import json, torch, deepspeed
import torch.nn.functional as F
from models import build
from tasks.continual import strategies as cl
from tasks.params import Continual, Train
from tasks.training import ops
from tasks.training.engine import build_engine, ds_config

ops.build()  # the op this environment compiled once, not a compile in the test's own HOME
deepspeed.init_distributed(dist_backend="gloo")
CFG = {"n_features": 4, "n_outputs": 3, "hidden": [16], "norm": "none", "dropout": 0.0}
torch.manual_seed(0)
x_old, y_old = torch.randn(64, 4), torch.randint(0, 3, (64,))
x_new, y_new = torch.randn(32, 4) + 2.0, torch.randint(0, 3, (32,))  # another distribution: the task pulls away
parent = build("mlp", CFG)
parent_state = {k: v.clone() for k, v in parent.state_dict().items()}
fisher = cl.diagonal_fisher(parent, x_old, y_old, lambda o, t: F.cross_entropy(o, t))
anchor = {n: p.detach().clone() for n, p in parent.named_parameters()}
teacher = build("mlp", CFG).eval().requires_grad_(False)
teacher.load_state_dict(parent_state)

def run(stage, name, weight, steps=30, perturb=0.0):
    p = Train.model_validate({"model": "mlp", "zero_stage": stage, "optimizer": {"lr": 0.01, "weight_decay": 0.0}})
    c = Continual.model_validate({"strategy": name, "ewc": {"weight": weight}, "lwf": {"weight": weight}})
    model = build("mlp", CFG)
    model.load_state_dict(parent_state)
    torch.manual_seed(1)  # the same student at every stage
    with torch.no_grad():  # a student away from the parent: the term has something to pull back
        for q in model.parameters():
            q.add_(perturb * torch.randn_like(q))
    s = cl.Strategy(name, c, fisher={k: v.clone() for k, v in fisher.items()}, anchor=dict(anchor),
                    teacher=teacher if name == "lwf" else None, classes=torch.tensor([0, 1, 2]))
    engine = build_engine(model, ds_config(p, 1, steps))
    s.place(engine.device)
    def total():
        with torch.no_grad():
            out = engine(x_new).float()
            loss, term = s.loss(out, x_new, y_new, engine.module, p)
        return loss.item(), 0.0 if term is None else term.item()
    first = total()
    for _ in range(steps):
        loss, term = s.loss(engine(x_new).float(), x_new, y_new, engine.module, p)
        engine.backward(loss)
        engine.step()
    moved = cl.ewc_penalty(engine.module, fisher, anchor).item()  # sum F (w - w_parent)^2
    return {"first": first, "last": total(), "moved": moved}

for stage in (0, 1, 2):
    out = {"ewc": run(stage, "ewc", 50.0, perturb=0.3), "lwf": run(stage, "lwf", 5.0, perturb=0.3),
           "naive": run(stage, "naive", 1.0), "held": run(stage, "ewc", 1e6)}
    print("STAGE", stage, json.dumps(out))
"""


@pytest.mark.slow  # a DeepSpeed start in a process of its own: 15 s to 2 min, by the machine's load
def test_the_ewc_and_lwf_terms_train_through_zero_0_1_and_2_engines(tmp_path):
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29798", "DS_ACCELERATOR": "cpu",
           "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", ENGINES], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = {int(line.split()[1]): json.loads(line.split(" ", 2)[2]) for line in done.stdout.splitlines()
               if line.startswith("STAGE ")}
    assert sorted(results) == [0, 1, 2], done.stdout[-2000:]
    for stage, r in results.items():
        for name in ("ewc", "lwf"):  # the total loss falls, and so does the term: its gradient reached the weights
            (loss0, term0), (loss1, term1) = r[name]["first"], r[name]["last"]
            assert loss1 < loss0 and term1 < 0.5 * term0, (stage, name, r[name])
        assert r["naive"]["moved"] > 0 and r["held"]["first"][1] == 0.0  # from the parent: no penalty at first
        assert r["held"]["moved"] < 0.05 * r["naive"]["moved"], (stage, r["held"], r["naive"])  # a huge weight
    flat = {stage: [v for run in r.values() for v in [*run["first"], *run["last"], run["moved"]]]
            for stage, r in results.items()}
    assert flat[1] == pytest.approx(flat[0], rel=1e-4, abs=1e-9)  # ZeRO's partitioned arithmetic, up to rounding
    assert flat[2] == pytest.approx(flat[0], rel=1e-4, abs=1e-9)


@pytest.mark.parametrize("strategy", ["ewc", "lwf"])
def test_a_first_run_from_an_empty_stage_trains_as_naive_and_without_a_spec_is_refused(splits, strategy):
    spec = Train.model_validate({"model": "mlp", "init": {"from": "digits@prod", "unassigned": "scratch"}})
    assert cl.effective(Continual(strategy=strategy), spec, warm=False).strategy == "naive"
    assert cl.effective(Continual(strategy=strategy), spec, warm=True).strategy == strategy
    scratch = Train.model_validate({"model": "mlp"})
    assert cl.effective(Continual(strategy=strategy), scratch, warm=False).strategy == strategy
    with pytest.raises(InputError, match=f"continual.strategy {strategy} needs a parent"):
        cl.check(Continual(strategy=strategy), scratch, splits, 0)
