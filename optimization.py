"""The optimiser and learning-rate schedule of a run, from its config: Adam + OneCycle for SIGA_R/TRBA
(SPEC §5.2), AdamW + linear warm-up and cosine decay for SIGA_S/TSBA (SPEC_SIGA_S §5.2), Adadelta + cosine
annealing for SIGA_T/VITBA (SPEC_SIGA_T §5)."""
from __future__ import annotations

import math
from typing import Iterable

import torch

from config import Config

OPTIMIZERS = ("adam", "adamw", "adadelta")
SCHEDULES = ("one_cycle", "warmup_cosine", "cosine")


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: Config) -> torch.optim.Optimizer:
    """``config.optimizer`` with the config's learning rate, betas (Adadelta: rho), epsilon and weight decay
    (AdamW, Adadelta), the latter on every parameter as the official code does."""
    if config.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {config.optimizer!r}; choose from {OPTIMIZERS}")
    if config.optimizer == "adadelta":
        return torch.optim.Adadelta(parameters, lr=config.lr, rho=config.rho, eps=config.eps,
                                    weight_decay=config.weight_decay)
    betas = (config.beta1, config.beta2)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, betas=betas, eps=config.eps, weight_decay=config.weight_decay)
    return torch.optim.Adam(parameters, lr=config.lr, betas=betas, eps=config.eps)


def one_cycle_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR exactly as SPEC §5.2: cosine warm-up over pct_start, then cosine decay, no momentum cycling."""
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.num_iter, pct_start=config.pct_start,
        anneal_strategy="cos", cycle_momentum=False, div_factor=config.div_factor,
        final_div_factor=config.final_div_factor, three_phase=False,
    )


def warmup_cosine_lr(step: int, config: Config) -> float:
    """SPEC_SIGA_S §5.2's table, as intended (bug S16 fixed: step t uses entry t): ``warmup_fraction`` of
    ``num_iter`` steps rising linearly from 0 to lr (both ends included), then cosine decay to ``min_lr``."""
    warmup = round(config.warmup_fraction * config.num_iter)
    if step < warmup:
        return config.lr * step / max(warmup - 1, 1)
    decay = max(config.num_iter - warmup, 1)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1.0 + math.cos(math.pi * (step - warmup) / decay))


def build_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LRScheduler:
    """``config.schedule``, stepped once after every optimiser step (exactly ``num_iter`` steps)."""
    if config.schedule == "one_cycle":
        return one_cycle_scheduler(optimizer, config)
    if config.schedule == "warmup_cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: warmup_cosine_lr(step, config) / config.lr)
    if config.schedule == "cosine":  # CosineAnnealingLR(T_max = num_iter), no warm-up (SPEC_SIGA_T §5)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.num_iter, eta_min=config.min_lr)
    raise ValueError(f"unknown schedule {config.schedule!r}; choose from {SCHEDULES}")
