"""Model families, picked by name (`train.model` in params.yaml).

`build(name, config)` makes a module from its config dict, the same dict that
is stored in the safetensors file's metadata, so a saved model can be rebuilt
from the file alone.

Every family names its head, the final output layer (`module.output()`), the
one part whose shape follows the number of outputs; the rest is its backbone.
`split(module)` gives the two sets of state-dict keys, which transfer learning
(tasks/training/init.py) keeps, resets, freezes or trains at its own rate.
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


def head_prefix(module: nn.Module) -> str:
    """The dotted name of the module's head (its output layer): "net.4", "head.2", ..."""
    out = module.output()
    return next(name for name, m in module.named_modules() if m is out)


def split(module: nn.Module) -> tuple[list[str], list[str]]:
    """(backbone, head): the module's state-dict keys (parameters and buffers), in order, each in one list."""
    prefix = head_prefix(module) + "."
    keys = list(module.state_dict())
    return [k for k in keys if not k.startswith(prefix)], [k for k in keys if k.startswith(prefix)]
