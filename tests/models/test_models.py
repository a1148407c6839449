"""models: each family builds from its config dict, maps inputs to outputs, and can fit a small batch."""

import pytest
import torch

from models import build
from models.sequence import pool

IMAGE = torch.randn(32, 64)  # 8x8 images, or 8 steps of 8 values
TOKENS = torch.randint(1, 50, (32, 12)).float()  # token ids as the tables store them
TOKENS[:, 9:] = 0  # padding at the end of each row

FAMILIES = [
    ("mlp", IMAGE, {"n_features": 64, "n_outputs": 10, "hidden": [32, 16], "dropout": 0.1}),
    ("mlp", IMAGE, {"n_features": 64, "n_outputs": 10, "hidden": [32], "activation": "tanh", "norm": "layer",
                    "init": "xavier"}),
    ("mlp", IMAGE, {"n_features": 64, "n_outputs": 10, "hidden": [32], "activation": "sigmoid", "norm": "none",
                    "init": "default", "dropout": 0.0}),
    ("cnn", IMAGE, {"image_shape": [8, 8], "n_outputs": 10, "channels": [8, 16], "dropout": 0.1}),
    ("cnn", IMAGE, {"image_shape": [8, 8], "n_outputs": 10, "channels": [8], "activation": "gelu",
                    "norm": "layer"}),
    ("rnn", IMAGE, {"n_features": 64, "n_outputs": 10, "seq_len": 8, "cell": "lstm", "hidden": 32}),
    ("rnn", IMAGE, {"n_features": 64, "n_outputs": 10, "seq_len": 8, "cell": "gru", "hidden": 32, "layers": 2,
                    "bidirectional": True, "init": "he"}),
    ("rnn", TOKENS, {"n_features": 12, "n_outputs": 10, "seq_len": 12, "vocab_size": 50, "hidden": 32}),
    ("transformer", IMAGE, {"n_features": 64, "n_outputs": 10, "seq_len": 8, "d_model": 32, "heads": 4}),
    ("transformer", TOKENS, {"n_features": 12, "n_outputs": 10, "seq_len": 12, "vocab_size": 50, "d_model": 32,
                             "heads": 2, "layers": 1, "activation": "relu"}),
]


@pytest.mark.parametrize("name,x,config", FAMILIES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FAMILIES)])
def test_forward_shape_and_learning(name, x, config):
    torch.manual_seed(0)
    model = build(name, config)
    y = torch.randint(0, 10, (32,))
    assert model(x).shape == (32, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(40):  # it can fit a small batch: gradients flow through every layer
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_regression_head_has_one_output():
    model = build("mlp", {"n_features": 64, "n_outputs": 1, "hidden": [16]})
    assert model(IMAGE).shape == (32, 1)


def test_padding_is_left_out_of_the_pooled_state():
    h = torch.randn(2, 5, 3)
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    torch.testing.assert_close(pool(h, mask), torch.stack([h[0, :2].mean(0), h[1].mean(0)]))
    torch.manual_seed(0)
    for name in ("rnn", "transformer"):  # a row of padding only still gives finite outputs
        model = build(name, {"n_features": 12, "n_outputs": 3, "seq_len": 12, "vocab_size": 50,
                             **({"d_model": 16, "heads": 2} if name == "transformer" else {"hidden": 16})}).eval()
        assert torch.isfinite(model(torch.zeros(2, 12))).all()


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="unknown model 'lstm'"):
        build("lstm", {})
    with pytest.raises(ValueError, match="too small"):
        build("cnn", {"image_shape": [2, 2], "n_outputs": 2, "channels": [4, 4]})
    with pytest.raises(ValueError, match="do not split into 7 equal steps"):
        build("rnn", {"n_features": 64, "n_outputs": 2, "seq_len": 7})
    with pytest.raises(ValueError, match="not a multiple of heads"):
        build("transformer", {"n_features": 64, "n_outputs": 2, "seq_len": 8, "d_model": 30, "heads": 4})


@pytest.mark.parametrize("name,x,config", FAMILIES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(FAMILIES)])
def test_every_family_splits_into_a_backbone_and_its_output_layer(name, x, config):
    """Every state-dict key is in exactly one part; the head is exactly what follows n_outputs."""
    from models import head_prefix, split

    model, other = build(name, config), build(name, {**config, "n_outputs": 3})
    backbone, head = split(model)
    keys = list(model.state_dict())
    assert sorted(backbone + head) == sorted(keys) and not set(backbone) & set(head)
    assert head == [f"{head_prefix(model)}.weight", f"{head_prefix(model)}.bias"]
    assert isinstance(model.output(), torch.nn.Linear) and model.output().out_features == config["n_outputs"]
    differ = [k for k, v in model.state_dict().items() if v.shape != other.state_dict()[k].shape]
    assert differ == head
    names = {n for n, _ in model.named_parameters()}
    assert set(head) <= names and backbone  # the head is parameters only; every family has a backbone
