"""How the sequence models read a flat feature row as a sequence.

    steps = SequenceInput(n_features=64, seq_len=8, width=32)   # 8 steps of 8 values -> (N, 8, 32)
    steps = SequenceInput(n_features=128, seq_len=128, width=32, vocab_size=2000)  # token ids -> embeddings

Continuous features are cut into seq_len equal steps (an image's rows, say)
and projected to `width`; token ids (0 is padding) are embedded. `mask` marks
the real positions, and `pool` averages over them.
"""

from __future__ import annotations

import torch
from torch import nn


class SequenceInput(nn.Module):
    def __init__(self, n_features: int, seq_len: int, width: int, vocab_size: int = 0):
        super().__init__()
        if n_features % seq_len:
            raise ValueError(f"{n_features} features do not split into {seq_len} equal steps")
        self.seq_len, self.step = seq_len, n_features // seq_len
        self.vocab_size = vocab_size
        self.proj = nn.Embedding(vocab_size, width, padding_idx=0) if vocab_size else nn.Linear(self.step, width)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, n_features) -> steps (N, seq_len, width), mask (N, seq_len) true at real positions."""
        if self.vocab_size:
            ids = x.long()  # ids are stored exactly in float32 (below 2**24)
            return self.proj(ids), ids != 0
        steps = x.view(x.shape[0], self.seq_len, self.step)
        return self.proj(steps), torch.ones(x.shape[:1] + (self.seq_len,), dtype=torch.bool, device=x.device)


def pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of h (N, T, D) over the positions where mask (N, T) is true -> (N, D)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)
