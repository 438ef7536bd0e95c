"""Bidirectional LSTM with an output projection (SPEC §3.3)."""
from __future__ import annotations

import torch
import torch.nn as nn


class BiLSTM(nn.Module):
    """Single-layer batch-first BiLSTM followed by Linear(2·hidden → output): [B, T, in] → [B, T, out]."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden_size * 2, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and x.is_cuda:
            self.rnn.flatten_parameters()
        return self.linear(self.rnn(x)[0])


def bilstm_stack(input_size: int, hidden_size: int, layers: int = 2) -> nn.Sequential:
    """The two stacked BiLSTMs used for contextual features: in → hidden → hidden."""
    sizes = [input_size] + [hidden_size] * layers
    return nn.Sequential(*[BiLSTM(sizes[i], hidden_size, hidden_size) for i in range(layers)])
