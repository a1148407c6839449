"""Model families, picked by name (`train.model` in params.yaml).

`build(name, config)` makes a module from its config dict, the same dict that
is stored in the safetensors file's metadata, so a saved model can be rebuilt
from the file alone.
"""

from __future__ import annotations

from torch import nn

from models.cnn import CNN, CNNConfig
from models.mlp import MLP, MLPConfig
from models.rnn import RNN, RNNConfig
from models.transformer import Transformer, TransformerConfig

FAMILIES = {"mlp": (MLPConfig, MLP), "cnn": (CNNConfig, CNN), "rnn": (RNNConfig, RNN),
            "transformer": (TransformerConfig, Transformer)}


def build(name: str, config: dict) -> nn.Module:
    if name not in FAMILIES:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(FAMILIES)}")
    config_cls, module_cls = FAMILIES[name]
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return module_cls(config_cls(**fields))
