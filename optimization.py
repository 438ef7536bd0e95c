"""The optimiser and learning-rate schedule of a run, from its config (SPEC §5.2)."""
from __future__ import annotations

from typing import Iterable

import torch

from config import Config


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: Config) -> torch.optim.Optimizer:
    """Adam with the config's learning rate, betas and epsilon (SPEC §5.2)."""
    return torch.optim.Adam(parameters, lr=config.lr, betas=(config.beta1, config.beta2), eps=config.eps)


def one_cycle_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR exactly as SPEC §5.2: cosine warm-up over pct_start, then cosine decay, no momentum cycling."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.num_iter, pct_start=config.pct_start,
        anneal_strategy="cos", cycle_momentum=False, div_factor=config.div_factor,
        final_div_factor=config.final_div_factor, three_phase=False,
    )
