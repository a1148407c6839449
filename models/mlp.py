"""A multilayer perceptron for flat feature vectors.

    MLP(MLPConfig(n_features=64, n_outputs=10, hidden=(128, 64)))

Each hidden block is Linear -> norm -> activation -> Dropout. n_outputs is the
number of classes, or 1 for regression.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import activation, init_weights, norm_1d


@dataclass(frozen=True)
class MLPConfig:
    n_features: int
    n_outputs: int
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1
    activation: str = "relu"
    norm: str = "batch"  # batch, layer or none
    init: str = "he"  # he, xavier or default


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        layers, width = [], cfg.n_features
        for size in cfg.hidden:
            layers += [nn.Linear(width, size), norm_1d(cfg.norm, size), activation(cfg.activation),
                       nn.Dropout(cfg.dropout)]
            width = size
        layers.append(nn.Linear(width, cfg.n_outputs))
        self.net = nn.Sequential(*layers)
        init_weights(self, cfg.init, cfg.activation)

    def output(self) -> nn.Linear:
        """The head: the final linear layer, the one part whose shape follows n_outputs."""
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, n_features) -> (N, n_outputs)
