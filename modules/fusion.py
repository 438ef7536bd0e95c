"""Gated bimodal fusion (SPEC §3.8, §3.9): a learned per-feature choice between two aligned vectors."""
from __future__ import annotations

import torch
import torch.nn as nn


class GatedBimodal(nn.Module):
    """I = z ⊙ tanh(a) + (1 − z) ⊙ tanh(b) with the gate z = σ(W [a; b] + b_W).

    ``a`` and ``b`` are [..., D]; the output is [..., D]. Used inside the fusion decoders (context ×
    glyph feature) and to merge the two fusion decoders' outputs before the final generator.
    """

    def __init__(self, size: int):
        super().__init__()
        self.gate = nn.Linear(2 * size, size)
        self.size = size

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        joint = torch.cat([a, b], -1)
        squashed = torch.tanh(joint)
        z = torch.sigmoid(self.gate(joint))
        return z * squashed[..., : self.size] + (1 - z) * squashed[..., self.size :]
