"""A multilayer perceptron for flat feature vectors.

    MLP(MLPConfig(n_features=64, n_classes=10, hidden=(128, 64)))

Each hidden block is Linear -> BatchNorm -> ReLU -> Dropout; weights use He
initialisation, which suits ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MLPConfig:
    n_features: int
    n_classes: int
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.1


class MLP(nn.Module):
    def __init__(self, cfg: MLPConfig):
        super().__init__()
        layers, width = [], cfg.n_features
        for size in cfg.hidden:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU(), nn.Dropout(cfg.dropout)]
            width = size
        layers.append(nn.Linear(width, cfg.n_classes))
        self.net = nn.Sequential(*layers)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, n_features) -> (N, n_classes) logits
