"""The learning-rate schedule of SPEC §5.2."""
from __future__ import annotations

import math

import pytest
import torch

from config import Config, make_config
from optimization import build_optimizer, build_scheduler, one_cycle_scheduler


def learning_rates(optimizer: torch.optim.Optimizer, scheduler, steps: int) -> list[float]:
    """The learning rate of each of ``steps`` optimiser steps, the scheduler stepped after each."""
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_one_cycle_checkpoints():
    """SPEC §13: lr 2.25e-5 at step 0, 4.5e-4 at step 0.3·N − 1, ~2.25e-8 at N − 1, error past N."""
    config = Config(num_iter=1000)
    optimizer = build_optimizer([torch.nn.Parameter(torch.zeros(1))], config)
    scheduler = one_cycle_scheduler(optimizer, config)
    lrs = []
    for _ in range(config.num_iter - 1):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(2.25e-5)
    assert lrs[299] == pytest.approx(4.5e-4)
    assert max(lrs) == pytest.approx(4.5e-4)
    assert lrs[-1] == pytest.approx(2.25e-8, rel=1e-3)
    scheduler.step()  # the N-th step is allowed
    with pytest.raises(ValueError):
        scheduler.step()


def test_warmup_cosine_table_of_siga_s():
    """SPEC_SIGA_S §5.2 with E = 10 iterations per epoch: 20 warm-up entries linspace(0, 5e-4), then
    1e-7 + ½(5e-4 − 1e-7)(1 + cos(π i / 80)); step t runs at entry t (bug S16 fixed), exactly num_iter steps."""
    config = make_config("paper", model="SIGA_S", num_iter=100)
    assert (config.optimizer, config.schedule, config.grad_clip) == ("adamw", "warmup_cosine", None)
    parameter = torch.nn.Parameter(torch.ones(3))
    optimizer = build_optimizer([parameter], config)
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.param_groups[0]["weight_decay"] == 0.05
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.99) and optimizer.param_groups[0]["eps"] == 8e-8
    scheduler = build_scheduler(optimizer, config)
    lrs = learning_rates(optimizer, scheduler, config.num_iter)
    warmup = [5e-4 * i / 19 for i in range(20)]
    decay = [1e-7 + 0.5 * (5e-4 - 1e-7) * (1 + math.cos(math.pi * i / 80)) for i in range(80)]
    assert lrs == pytest.approx(warmup + decay, rel=1e-12, abs=1e-15)
    assert lrs[0] == 0.0 and max(lrs) == pytest.approx(5e-4)


def test_schedule_resumes_from_its_state():
    config = make_config("paper", model="SIGA_S", num_iter=50)
    first = build_scheduler(build_optimizer([torch.nn.Parameter(torch.ones(1))], config), config)
    for _ in range(17):
        first.optimizer.step()
        first.step()
    optimizer = build_optimizer([torch.nn.Parameter(torch.ones(1))], config)
    resumed = build_scheduler(optimizer, config)
    resumed.load_state_dict(first.state_dict())
    assert resumed.get_last_lr() == pytest.approx(first.get_last_lr())
    with pytest.raises(ValueError, match="unknown schedule"):
        build_scheduler(optimizer, config.replace(schedule="step"))
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer([torch.nn.Parameter(torch.ones(1))], config.replace(optimizer="sgd"))


def test_adadelta_cosine_of_siga_t():
    """SPEC_SIGA_T §5: Adadelta(1.0, rho 0.95, eps 1e-8), lr_t = ½(1 + cos(π t / N)) stepped after every
    optimiser step, no warm-up, clipping at 5, seed 226."""
    config = make_config("paper", model="SIGA_T", num_iter=40)
    assert (config.optimizer, config.schedule, config.grad_clip, config.seed) == ("adadelta", "cosine", 5.0, 226)
    optimizer = build_optimizer([torch.nn.Parameter(torch.ones(3))], config)
    assert isinstance(optimizer, torch.optim.Adadelta)
    group = optimizer.param_groups[0]
    assert (group["lr"], group["rho"], group["eps"], group["weight_decay"]) == (1.0, 0.95, 1e-8, 0.0)
    scheduler = build_scheduler(optimizer, config)
    lrs = learning_rates(optimizer, scheduler, config.num_iter)
    assert lrs == pytest.approx([0.5 * (1 + math.cos(math.pi * t / 40)) for t in range(40)], rel=1e-12, abs=1e-15)
