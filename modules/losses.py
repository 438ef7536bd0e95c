"""Loss functions as pure functions of tensors (SPEC §4)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def step_mask(lengths: torch.Tensor, num_steps: int) -> torch.Tensor:
    """[B, S] bool: True for the first ``lengths[b]`` steps of each sample (characters + EOS)."""
    return torch.arange(num_steps, device=lengths.device)[None, :] < lengths[:, None]


def recognition_loss(logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the first ``length_b`` steps of every sample, averaged over tokens
    (not samples), as SPEC §4.1. logits [B, S, C], targets [B, S] (ids after SOS), lengths [B]."""
    steps = logits.shape[1]
    keep = step_mask(lengths, steps)
    per_token = F.cross_entropy(logits.float().transpose(1, 2), targets[:, :steps], reduction="none")
    return (per_token * keep).sum() / keep.sum().clamp(min=1)
