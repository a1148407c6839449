"""What every model family shares: activations, normalisation and weight initialisation by name.

    act = activation("gelu")            # an nn.Module
    norm = norm_1d("layer", 64)         # BatchNorm1d, LayerNorm or Identity
    init_weights(model, "xavier", "tanh")
"""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "silu": nn.SiLU,
               "leaky_relu": nn.LeakyReLU, "elu": nn.ELU}
NORMS = ("batch", "layer", "none")
INITS = ("he", "xavier", "default")


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def norm_1d(kind: str, width: int) -> nn.Module:
    """Normalisation of (N, width) features."""
    return {"batch": lambda: nn.BatchNorm1d(width), "layer": lambda: nn.LayerNorm(width),
            "none": nn.Identity}[kind]()


def norm_2d(kind: str, channels: int) -> nn.Module:
    """Normalisation of (N, C, H, W) maps; 'layer' normalises each sample over all its channels."""
    return {"batch": lambda: nn.BatchNorm2d(channels), "layer": lambda: nn.GroupNorm(1, channels),
            "none": nn.Identity}[kind]()


def init_weights(model: nn.Module, scheme: str, act: str) -> None:
    """He (Kaiming) suits ReLU-like activations, Xavier (Glorot) tanh and sigmoid; 'default' keeps
    PyTorch's own. Biases start at zero; norms and embeddings keep their defaults."""
    if scheme == "default":
        return
    gain_name = {"gelu": "relu", "silu": "relu", "elu": "relu"}.get(act, act)  # close enough for the gain
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            if scheme == "he":
                nonlin = gain_name if gain_name in ("relu", "leaky_relu") else "relu"
                nn.init.kaiming_normal_(m.weight, nonlinearity=nonlin)
            else:
                nn.init.xavier_uniform_(m.weight, gain=nn.init.calculate_gain(gain_name))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LSTM, nn.GRU)):
            for name, w in m.named_parameters():
                if name.startswith("weight"):
                    (nn.init.kaiming_normal_ if scheme == "he" else nn.init.xavier_uniform_)(w)
                else:
                    nn.init.zeros_(w)
