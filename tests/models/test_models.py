"""models: each family builds from its config dict and maps inputs to logits."""

import pytest
import torch

from models import build


@pytest.mark.parametrize("name,config", [
    ("mlp", {"n_features": 64, "n_classes": 10, "hidden": [32, 16], "dropout": 0.1}),
    ("cnn", {"image_shape": [8, 8], "n_classes": 10, "channels": [8, 16], "dropout": 0.1}),
])
def test_forward_shape_and_learning(name, config):
    torch.manual_seed(0)
    model = build(name, config)
    x, y = torch.randn(32, 64), torch.randint(0, 10, (32,))
    assert model(x).shape == (32, 10)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(30):  # it can fit a small batch: gradients flow through every layer
        loss = torch.nn.functional.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_unknown_family_and_too_small_image():
    with pytest.raises(ValueError, match="unknown model 'rnn'"):
        build("rnn", {})
    with pytest.raises(ValueError, match="too small"):
        build("cnn", {"image_shape": [2, 2], "n_classes": 2, "channels": [4, 4]})
