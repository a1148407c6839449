"""A Transformer encoder over a feature row read as a sequence (token ids, or steps of values).

    Transformer(TransformerConfig(n_features=128, n_outputs=4, seq_len=128, vocab_size=2000))
    Transformer(TransformerConfig(n_features=64, n_outputs=10, seq_len=8))   # an 8x8 image, a row per token

Steps (models/sequence.py) plus a learned position embedding go through
`layers` pre-norm encoder layers (self-attention, then a feed-forward block of
ff_mult * d_model); padding positions are masked out of attention and of the
mean that feeds the output layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import init_weights
from models.sequence import SequenceInput, pool


@dataclass(frozen=True)
class TransformerConfig:
    n_features: int
    n_outputs: int
    seq_len: int
    vocab_size: int = 0
    d_model: int = 64
    heads: int = 4
    layers: int = 2
    ff_mult: int = 4
    dropout: float = 0.1
    activation: str = "gelu"  # gelu or relu (the encoder layer's own choices)
    init: str = "xavier"


class Transformer(nn.Module):
    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        if cfg.d_model % cfg.heads:
            raise ValueError(f"d_model {cfg.d_model} is not a multiple of heads {cfg.heads}")
        self.input = SequenceInput(cfg.n_features, cfg.seq_len, cfg.d_model, cfg.vocab_size)
        self.position = nn.Parameter(torch.zeros(1, cfg.seq_len, cfg.d_model))
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.heads, cfg.ff_mult * cfg.d_model, cfg.dropout,
                                           cfg.activation, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.d_model),
                                             enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.d_model, cfg.n_outputs))
        init_weights(self, cfg.init, cfg.activation)
        nn.init.normal_(self.position, std=0.02)

    def output(self) -> nn.Linear:
        """The head: the final linear layer, the one part whose shape follows n_outputs."""
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, mask = self.input(x)  # (N, T, d_model), (N, T)
        h = self.encoder(steps + self.position, src_key_padding_mask=~mask)
        return self.head(pool(h, mask))  # -> (N, n_outputs)
