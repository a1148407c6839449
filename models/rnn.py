"""A recurrent network (LSTM or GRU) over a feature row read as a sequence.

    RNN(RNNConfig(n_features=64, n_outputs=10, seq_len=8, cell="gru"))            # an 8x8 image, row by row
    RNN(RNNConfig(n_features=128, n_outputs=4, seq_len=128, vocab_size=2000))      # token ids

The steps (models/sequence.py) run through `layers` recurrent layers; the
outputs are averaged over the real (non-padding) positions, then a dropout and
one linear layer make the outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.blocks import init_weights, norm_1d
from models.sequence import SequenceInput, pool


@dataclass(frozen=True)
class RNNConfig:
    n_features: int
    n_outputs: int
    seq_len: int  # steps a row is read in: an image's height, or the token positions
    vocab_size: int = 0  # > 0: the features are token ids, embedded
    cell: str = "lstm"  # lstm or gru
    hidden: int = 64
    layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.1
    norm: str = "layer"  # on the pooled state: batch, layer or none
    init: str = "xavier"


class RNN(nn.Module):
    def __init__(self, cfg: RNNConfig):
        super().__init__()
        self.input = SequenceInput(cfg.n_features, cfg.seq_len, cfg.hidden, cfg.vocab_size)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell]
        self.rnn = rnn(cfg.hidden, cfg.hidden, cfg.layers, batch_first=True, bidirectional=cfg.bidirectional,
                       dropout=cfg.dropout if cfg.layers > 1 else 0.0)
        width = cfg.hidden * (2 if cfg.bidirectional else 1)
        self.head = nn.Sequential(norm_1d(cfg.norm, width), nn.Dropout(cfg.dropout), nn.Linear(width, cfg.n_outputs))
        init_weights(self, cfg.init, "tanh")

    def output(self) -> nn.Linear:
        """The head: the final linear layer (the norm before it is the backbone's, its shape the state's)."""
        return self.head[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        steps, mask = self.input(x)  # (N, T, hidden), (N, T)
        out, _ = self.rnn(steps)  # (N, T, hidden * directions)
        return self.head(pool(out, mask))  # -> (N, n_outputs)
