"""A small convolutional network for images given as flat pixel rows.

    CNN(CNNConfig(image_shape=(8, 8), n_outputs=10, channels=(16, 32)))

Each block is Conv3x3 -> norm -> activation -> MaxPool2x2, halving the image;
a dropout and one linear layer make the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import activation, init_weights, norm_2d


@dataclass(frozen=True)
class CNNConfig:
    image_shape: tuple[int, int]
    n_outputs: int
    channels: tuple[int, ...] = (16, 32)
    dropout: float = 0.1
    activation: str = "relu"
    norm: str = "batch"  # batch, layer (one group over all channels) or none
    init: str = "he"


class CNN(nn.Module):
    def __init__(self, cfg: CNNConfig):
        super().__init__()
        self.shape = tuple(cfg.image_shape)
        h, w = self.shape
        if min(h, w) < 2 ** len(cfg.channels):
            raise ValueError(f"image {h}x{w} is too small for {len(cfg.channels)} pooling blocks")
        blocks, c_in = [], 1
        for c_out in cfg.channels:
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), norm_2d(cfg.norm, c_out), activation(cfg.activation),
                       nn.MaxPool2d(2)]
            c_in, h, w = c_out, h // 2, w // 2
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(cfg.dropout), nn.Linear(c_in * h * w, cfg.n_outputs))
        init_weights(self, cfg.init, cfg.activation)

    def output(self) -> nn.Linear:
        """The head: the final linear layer, the one part whose shape follows n_outputs."""
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(x.shape[0], 1, *self.shape)  # (N, H*W) -> (N, 1, H, W)
        return self.head(self.features(x))  # -> (N, n_outputs)
